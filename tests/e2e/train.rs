//! `train` end to end on a small synthetic world with the tiny model:
//! resuming is bitwise identical to an uninterrupted run, non-finite steps
//! stop the run with a clear message, and a trained run evaluates, embeds,
//! exports a Hugging Face folder that `transformers` reads with the same
//! embeddings, draws its curves and its mask pictures.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::util::{ingest_mimic, run, run_ok, workspace, world};

/// The world and its shards, made once for every test here.
pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub(crate) world: PathBuf,
    pub(crate) mimic: PathBuf,
    pub(crate) padchest: PathBuf,
}

pub(crate) fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().join("world");
        world(
            &w,
            &["--studies", "80", "--padchest-images", "60", "--seed", "3"],
        );
        let mimic = dir.path().join("mimic");
        let out = ingest_mimic(&w.join("mimic-cxr"), &mimic, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let padchest = dir.path().join("padchest");
        run_ok(
            "ingest",
            &[
                "padchest",
                "--images-only",
                "--root",
                w.join("padchest").to_str().unwrap(),
                "--out",
                padchest.to_str().unwrap(),
            ],
        );
        Fixture {
            world: w,
            mimic,
            padchest,
            _dir: dir,
        }
    })
}

pub(crate) const TINY: &str = r#"
[model]
preset = "tiny"
[optim]
kind = "adamw"
lr = 1e-3
grad_clip = 1.0
[train]
steps = 6
warmup_steps = 2
batch_size = 8
loader_threads = 1
prefetch = 2
log_every = 1
checkpoint_every = 3
keep_last = 2
"#;

pub(crate) fn train(config: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let f = fixture();
    let mut args = vec![
        "--shards",
        f.mimic.to_str().unwrap(),
        "--shards",
        f.padchest.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    run("train", &args)
}

pub(crate) fn ok(out: std::process::Output) {
    assert!(
        out.status.success(),
        "train failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (step, loss terms) of each metrics line.
fn losses(run: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let terms = [
                "loss",
                "loss_align",
                "loss_mim",
                "loss_mlm",
                "grad_norm",
                "lr",
            ]
            .map(|k| v[k].to_string());
            (v["step"].as_u64().unwrap(), terms.join(" "))
        })
        .collect()
}

fn final_weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("checkpoints/step-00000006/model.safetensors")).unwrap()
}

/// A trained tiny run shared by the evaluation tests.
pub(crate) fn trained() -> &'static PathBuf {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("tiny.toml");
        std::fs::write(&cfg, TINY).unwrap();
        let out = dir.path().join("run");
        ok(train(&cfg, &out, &[]));
        (dir, out)
    })
    .1
}

#[test]
fn a_resumed_run_continues_exactly_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let straight = dir.path().join("straight");
    ok(train(&cfg, &straight, &[]));

    let resumed = dir.path().join("resumed");
    ok(train(&cfg, &resumed, &["--stop-after", "4"]));
    assert!(resumed.join("checkpoints/step-00000004").is_dir());
    // A checkpoint half-written when the run was killed is ignored.
    std::fs::create_dir_all(resumed.join("checkpoints/step-00000005.partial")).unwrap();
    ok(train(&cfg, &resumed, &[]));

    let (a, b) = (losses(&straight), losses(&resumed));
    assert_eq!(a.len(), 6);
    assert_eq!(a, b, "losses differ after resuming");
    assert!(
        a[0].1.contains("null"),
        "warm-up steps have no alignment loss: {}",
        a[0].1
    );
    assert!(
        !a[5].1.starts_with("null"),
        "joint steps have losses: {}",
        a[5].1
    );
    assert_eq!(
        final_weights(&straight),
        final_weights(&resumed),
        "weights differ after resuming"
    );
    // keep_last = 2: step 3 was pruned in the straight run.
    let kept: Vec<String> = std::fs::read_dir(straight.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");

    // The finished run started again does nothing; another config is refused.
    ok(train(&cfg, &straight, &[]));
    assert_eq!(losses(&straight).len(), 6);
    std::fs::write(&cfg, TINY.replace("lr = 1e-3", "lr = 2e-3")).unwrap();
    let out = train(&cfg, &straight, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("another config"),
        "{err}"
    );
}

#[test]
fn non_finite_steps_are_skipped_and_too_many_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    let text = TINY
        .replace(
            "kind = \"adamw\"\nlr = 1e-3\ngrad_clip = 1.0",
            "kind = \"sgd\"\nlr = 1e30",
        )
        .replace("steps = 6", "steps = 30\nmax_nonfinite_in_a_row = 3");
    std::fs::write(&cfg, text).unwrap();
    let out = train(&cfg, &dir.path().join("run"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an exploding run must stop");
    assert!(err.contains("4 non-finite steps in a row"), "{err}");
    assert!(err.contains("max_nonfinite_in_a_row = 3"), "{err}");
}

#[test]
fn a_bad_config_names_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("typo.toml");
    std::fs::write(&cfg, "[optim]\nlearnig_rate = 0.1\n").unwrap();
    let out = train(&cfg, &dir.path().join("run"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("typo.toml") && err.contains("learnig_rate"),
        "{err}"
    );
}

#[test]
fn zero_shot_and_linear_probe_reports_cover_the_classes() {
    let f = fixture();
    let run_dir = trained();
    let out = run_dir.parent().unwrap().join("eval");
    run_ok(
        "train",
        &[
            "eval",
            "zero-shot",
            "--checkpoint",
            run_dir.to_str().unwrap(),
            // The same checkpoint twice: an ensemble of identical members
            // scores as the member does.
            "--checkpoint",
            run_dir.join("checkpoints/step-00000006").to_str().unwrap(),
            "--shards",
            f.mimic.to_str().unwrap(),
            "--bootstrap",
            "50",
            "--missing-as-negative",
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ],
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("zero_shot.json")).unwrap())
            .unwrap();
    let classes = report["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 14);
    let defined: Vec<f64> = classes.iter().filter_map(|c| c["auc"].as_f64()).collect();
    assert!(
        !defined.is_empty(),
        "no class has both label values in the test split"
    );
    assert!(defined.iter().all(|a| (0.0..=1.0).contains(a)));
    assert!(
        std::fs::read_to_string(out.join("zero_shot.md"))
            .unwrap()
            .contains("| Cardiomegaly")
    );

    run_ok(
        "train",
        &[
            "eval",
            "linear-probe",
            "--checkpoint",
            run_dir.to_str().unwrap(),
            "--shards",
            f.mimic.to_str().unwrap(),
            "--bootstrap",
            "20",
            "--fractions",
            "0.5,1.0",
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ],
    );
    let probe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("linear_probe.json")).unwrap())
            .unwrap();
    assert_eq!(probe.as_array().unwrap().len(), 2);
}

/// Usable rows of `split` and the positives per PadChest finding, counted
/// here from the shard rows: rows with labels and without `exclude` are
/// usable.
fn padchest_counts(dir: &Path, split: &str) -> (usize, std::collections::BTreeMap<String, usize>) {
    let mut usable = 0;
    let mut positives = std::collections::BTreeMap::new();
    for row in crate::util::rows(dir) {
        let labels: Vec<String> = row
            .finding_labels
            .iter()
            .map(|l| l.to_lowercase())
            .collect();
        if row.split != split || labels.is_empty() || labels.iter().any(|l| l == "exclude") {
            continue;
        }
        usable += 1;
        for l in labels {
            *positives.entry(l).or_insert(0) += 1;
        }
    }
    (usable, positives)
}

#[test]
fn zero_shot_on_the_padchest_label_set_scores_padchest_findings() {
    let f = fixture();
    let run_dir = trained();
    // The fixture's PadChest test split holds a handful of rows: the
    // train split stands in as the "test" split here.
    let (usable, positives) = padchest_counts(&f.padchest, "train");
    assert!(usable > 0, "no PadChest train rows in the fixture");
    let eval_set = |name: &str, set: &str, extra: &[&str]| -> Vec<serde_json::Value> {
        let out = run_dir.parent().unwrap().join(name);
        let mut args = vec![
            "eval",
            "zero-shot",
            "--label-set",
            set,
            "--checkpoint",
            run_dir.to_str().unwrap(),
            // The MIMIC-CXR folder is ignored: PadChest labels are PadChest rows'.
            "--shards",
            f.mimic.to_str().unwrap(),
            "--shards",
            f.padchest.to_str().unwrap(),
            "--split",
            "train",
            "--bootstrap",
            "20",
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        run_ok("train", &args);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("zero_shot.json")).unwrap())
                .unwrap();
        report["classes"].as_array().unwrap().clone()
    };
    let eval = |name: &str, extra: &[&str]| eval_set(name, "padchest", extra);

    // Default: the 8 findings that name CheXpert classes, each counted over
    // every usable PadChest test row.
    let seen = eval("eval-padchest-seen", &[]);
    let names: Vec<&str> = seen.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "atelectasis",
            "cardiomegaly",
            "consolidation",
            "nodule",
            "pleural effusion",
            "pneumonia",
            "pneumothorax",
            "pulmonary edema"
        ]
    );
    for c in &seen {
        let name = c["name"].as_str().unwrap();
        assert_eq!(c["n_test"].as_u64().unwrap() as usize, usable, "{name}");
        assert_eq!(
            c["positives_test"].as_u64().unwrap() as usize,
            positives.get(name).copied().unwrap_or(0),
            "{name}"
        );
    }
    assert!(
        seen.iter().any(|c| c["auc"].as_f64().is_some()),
        "no seen finding has both label values"
    );

    // Unseen: the most frequent findings that are neither seen ones nor
    // non-findings, most frequent first.
    let not_unseen = [
        "atelectasis",
        "cardiomegaly",
        "consolidation",
        "nodule",
        "pleural effusion",
        "pneumonia",
        "pneumothorax",
        "pulmonary edema",
        "normal",
        "exclude",
        "suboptimal study",
        "unchanged",
    ];
    let mut ranked: Vec<(&String, &usize)> = positives
        .iter()
        .filter(|(l, _)| !not_unseen.contains(&l.as_str()))
        .collect();
    ranked.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let want: Vec<&str> = ranked.iter().take(3).map(|(l, _)| l.as_str()).collect();
    assert_eq!(
        want.len(),
        3,
        "the fixture has fewer than 3 unseen findings: {positives:?}"
    );
    let unseen = eval("eval-padchest-unseen", &["--unseen-top", "3"]);
    let names: Vec<&str> = unseen.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, want);
    // The paper's "all unseen" group as a named set: every one, in order.
    let all = eval_set("eval-padchest-all-unseen", "padchest-unseen", &[]);
    let names: Vec<&str> = all.iter().map(|c| c["name"].as_str().unwrap()).collect();
    let every: Vec<&str> = ranked.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(names, every);
    for c in &unseen {
        let name = c["name"].as_str().unwrap();
        assert_eq!(
            c["positives_test"].as_u64().unwrap() as usize,
            positives[name],
            "{name}"
        );
    }
}

#[test]
fn exported_hugging_face_folder_gives_the_same_embeddings_in_transformers() {
    let run_dir = trained();
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    run_ok(
        "train",
        &[
            "export-hf",
            "--checkpoint",
            run_dir.to_str().unwrap(),
            "--out",
            hf.to_str().unwrap(),
        ],
    );
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "preprocessor_config.json",
    ] {
        assert!(hf.join(f).is_file(), "missing {f}");
    }
    // Two 224×224 grayscale PNGs and three texts.
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for (name, seed) in [("a.png", 3u32), ("b.png", 11)] {
        let img = image::GrayImage::from_fn(224, 224, |x, y| {
            image::Luma([((x * seed + y * 7) % 251) as u8])
        });
        img.save(images.join(name)).unwrap();
    }
    let texts = dir.path().join("texts.txt");
    std::fs::write(
        &texts,
        "small left pleural effusion\nno pneumothorax\nthe heart is mildly enlarged\n",
    )
    .unwrap();
    let emb = |weights: &Path, kind: &str, input: &Path, out: &Path| {
        run_ok(
            "train",
            &[
                "embed",
                "--weights",
                weights.to_str().unwrap(),
                kind,
                input.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--device",
                "cpu",
            ],
        )
    };
    let (img_pq, txt_pq) = (
        dir.path().join("img.parquet"),
        dir.path().join("txt.parquet"),
    );
    emb(run_dir, "--images", &images, &img_pq);
    emb(run_dir, "--texts", &texts, &txt_pq);
    // The exported folder embeds identically to the checkpoint in Rust…
    let img_hf = dir.path().join("img_hf.parquet");
    emb(&hf, "--images", &images, &img_hf);
    assert_eq!(embeddings(&img_pq), embeddings(&img_hf));
    // …and in transformers.
    let python = workspace().join(".venv/bin/python");
    let out = Command::new(&python)
        .arg(workspace().join("python/model_ref/check_export.py"))
        .args([&hf, &texts, &txt_pq, &images, &img_pq])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("running the venv's python");
    assert!(
        out.status.success(),
        "transformers disagrees with the Rust embeddings:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn embeddings(path: &Path) -> Vec<(String, Vec<f32>)> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Float32Type;
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let keys = batch
            .column_by_name("key")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let emb = batch
            .column_by_name("embedding")
            .unwrap()
            .as_fixed_size_list()
            .clone();
        for i in 0..batch.num_rows() {
            let v = emb.value(i);
            out.push((
                keys.value(i).to_string(),
                v.as_primitive::<Float32Type>().values().to_vec(),
            ));
        }
    }
    out
}

#[test]
fn curves_and_mask_pictures_are_drawn() {
    let f = fixture();
    let run_dir = trained();
    let listed = run_ok("train", &["plot", "--run", run_dir.to_str().unwrap()]);
    for field in ["loss", "loss_mim", "lr"] {
        let png = run_dir.join("plots").join(format!("{field}.png"));
        assert!(
            std::fs::metadata(&png)
                .map(|m| m.len() > 1000)
                .unwrap_or(false),
            "{} missing in {listed}",
            png.display()
        );
    }
    let out = run_dir.parent().unwrap().join("masks");
    let lesions = f.world.join("lesions.jsonl");
    let viz = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "viz-masks",
            "--checkpoint",
            run_dir.to_str().unwrap(),
            "--shards",
            f.mimic.to_str().unwrap(),
            "--split",
            "train",
            "--pictures",
            "2",
            "--measure",
            "40",
            "--lesions",
            lesions.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        let printed = run_ok("train", &args);
        let shares: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("lesion_shares.json")).unwrap())
                .unwrap();
        (printed, shares)
    };
    let (printed, shares) = viz(&out, &[]);
    let pictures: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "png")
        })
        .collect();
    assert_eq!(pictures.len(), 2);
    assert!(shares["lesion_patches"].as_u64().unwrap() > 0, "{printed}");
    let s = shares["shares"].as_array().unwrap();
    assert_eq!(s.len(), 5);
    // 75% of patches are masked, so any strategy masks a sizeable share of lesion patches.
    for pair in s {
        let share = pair[1].as_f64().unwrap();
        assert!((0.3..=1.0).contains(&share), "{pair}");
    }

    // Candidate sets: none for random; each single map marks ⌈λ1·N⌉ of
    // the N patches (N ≥ 16 here, so within 1/16 above λ1); AttMIM's union
    // holds at least as many as any one map. A smaller --lambda1 shrinks them.
    let candidates = |shares: &serde_json::Value| -> Vec<f64> {
        let c = shares["candidate_shares"].as_array().unwrap();
        let names: Vec<&str> = c.iter().map(|p| p[0].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "random",
                "image-report",
                "prompt-driven",
                "image-self",
                "att-mim"
            ]
        );
        c.iter().map(|p| p[1].as_f64().unwrap()).collect()
    };
    let check = |shares: &serde_json::Value, lambda1: f64| -> Vec<f64> {
        assert_eq!(shares["lambda1"].as_f64(), Some(lambda1), "{shares}");
        let c = candidates(shares);
        assert_eq!(c[0], 0.0, "random has no candidates: {c:?}");
        for &single in &c[1..4] {
            assert!(
                single >= lambda1 && single < lambda1 + 1.0 / 16.0,
                "a single map at λ1 {lambda1}: {c:?}"
            );
        }
        assert!(
            c[4] >= c[1].max(c[2]).max(c[3]) && c[4] <= 1.0,
            "union: {c:?}"
        );
        c
    };
    let at_default = check(&shares, 0.7);
    let (_, narrow) = viz(
        &run_dir.parent().unwrap().join("masks-0.3"),
        &["--lambda1", "0.3"],
    );
    let at_narrow = check(&narrow, 0.3);
    assert!(
        at_narrow[4] < at_default[4],
        "AttMIM's candidates at λ1 0.3 {at_narrow:?} vs 0.7 {at_default:?}"
    );
}
