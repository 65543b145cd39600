//! `train` on damaged, changed or wrong inputs: it refuses rather than
//! give results from them, names what is wrong, and leaves nothing behind
//! that a later run trips over. Uses the tiny model and the shards of
//! `train.rs`.

use std::path::{Path, PathBuf};

use crate::train::{TINY, fixture, ok, train, trained};
use crate::util::{manifest, run};

/// A copy of a shard folder (the shared fixture must stay intact).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `step` of each line of a run's metrics.jsonl.
fn logged_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// Training arguments on explicit shard folders.
fn train_on(shards: &[&Path], config: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<&str> = Vec::new();
    for s in shards {
        args.extend(["--shards", s.to_str().unwrap()]);
    }
    args.extend([
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    args.extend_from_slice(extra);
    run("train", &args)
}

#[test]
fn evaluation_refuses_a_damaged_shard_unless_told_not_to_verify() {
    let f = fixture();
    let run_dir = trained();
    let dir = tempfile::tempdir().unwrap();
    let mimic = dir.path().join("mimic");
    copy_dir(&f.mimic, &mimic);
    // 16 bytes XOR-ed in the middle of one shard: the footer and the row
    // count still agree with the manifest, only the sha256 tells.
    let shard = manifest(&mimic).shards[0].file.clone();
    let path = mimic.join(&shard);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, bytes).unwrap();

    let zero_shot = |extra: &[&str]| {
        let out_dir = dir.path().join("eval");
        let mut args = vec![
            "eval",
            "zero-shot",
            "--checkpoint",
            run_dir.to_str().unwrap(),
            "--shards",
            mimic.to_str().unwrap(),
            "--bootstrap",
            "10",
            "--missing-as-negative",
            "--out",
            out_dir.to_str().unwrap(),
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        run("train", &args)
    };
    let out = zero_shot(&[]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains(&shard) && err.contains("sha256"),
        "zero-shot on a damaged shard must fail naming it:\n{err}"
    );
    let out = zero_shot(&["--no-verify"]);
    assert!(
        out.status.success(),
        "--no-verify skips the hash:\n{}",
        stderr(&out)
    );

    // The other readers of shards refuse it likewise.
    let probe = run(
        "train",
        &[
            "eval",
            "linear-probe",
            "--checkpoint",
            run_dir.to_str().unwrap(),
            "--shards",
            mimic.to_str().unwrap(),
            "--out",
            dir.path().join("probe").to_str().unwrap(),
            "--device",
            "cpu",
        ],
    );
    let masks = run(
        "train",
        &[
            "viz-masks",
            "--checkpoint",
            run_dir.to_str().unwrap(),
            "--shards",
            mimic.to_str().unwrap(),
            "--pictures",
            "1",
            "--out",
            dir.path().join("masks").to_str().unwrap(),
            "--device",
            "cpu",
        ],
    );
    for (name, out) in [("linear-probe", probe), ("viz-masks", masks)] {
        let err = stderr(&out);
        assert!(
            !out.status.success() && err.contains(&shard) && err.contains("sha256"),
            "{name} on a damaged shard must fail naming it:\n{err}"
        );
    }
}

#[test]
fn a_run_refuses_to_resume_on_other_shards_unless_allowed() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    // Other shards: a copy whose manifest differs (as a re-ingest would).
    let other = dir.path().join("mimic2");
    copy_dir(&f.mimic, &other);
    let m = other.join("manifest.json");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, format!("{text}\n")).unwrap();

    let out = dir.path().join("run");
    ok(train_on(
        &[&f.mimic, &f.padchest],
        &cfg,
        &out,
        &["--stop-after", "2"],
    ));
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let shards = recorded["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2, "{recorded}");
    assert_eq!(shards[0]["manifest_sha256"].as_str().unwrap().len(), 64);

    let refused = train_on(&[&other, &f.padchest], &cfg, &out, &["--stop-after", "1"]);
    let err = stderr(&refused);
    assert!(
        !refused.status.success()
            && err.contains(other.to_str().unwrap())
            && err.contains("--allow-other-shards"),
        "resuming on other shards must be refused naming the folder:\n{err}"
    );
    assert!(!out.join("checkpoints/step-00000003").exists());
    // Without the folder the run was trained on, likewise.
    let refused = train_on(&[&f.mimic], &cfg, &out, &["--stop-after", "1"]);
    let err = stderr(&refused);
    assert!(
        !refused.status.success()
            && err.contains(f.padchest.file_name().unwrap().to_str().unwrap()),
        "{err}"
    );

    ok(train_on(
        &[&other, &f.padchest],
        &cfg,
        &out,
        &["--stop-after", "1", "--allow-other-shards"],
    ));
    assert!(out.join("checkpoints/step-00000003").is_dir());
    // The new shards are the run's now.
    ok(train_on(
        &[&other, &f.padchest],
        &cfg,
        &out,
        &["--stop-after", "1"],
    ));
    assert!(out.join("checkpoints/step-00000004").is_dir());
}

#[test]
fn non_finite_learning_rates_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (value, shown) in [("nan", "NaN"), ("inf", "inf"), ("-1e-3", "-0.001")] {
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, TINY.replace("lr = 1e-3", &format!("lr = {value}"))).unwrap();
        let out = train(&cfg, &dir.path().join("run"), &[]);
        let err = stderr(&out);
        assert!(
            !out.status.success()
                && err.contains("bad.toml")
                && err.contains(&format!("optim.lr {shown}")),
            "lr = {value} must be refused naming the key:\n{err}"
        );
    }
    assert!(!dir.path().join("run/checkpoints").exists());
}

#[test]
fn cuda_graph_on_the_cpu_is_refused_before_the_run_folder_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let out = train(&cfg, &dir.path().join("run"), &["--cuda-graph"]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("--cuda-graph needs a CUDA device"),
        "--cuda-graph on the CPU must be refused:\n{err}"
    );
    assert!(!dir.path().join("run").exists());
}

#[test]
fn a_run_whose_weights_become_non_finite_stops_before_saving_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("huge.toml");
    // AdamW moves every weight by about lr on its first step: 1e39 is a
    // finite rate (and a finite gradient) that leaves float32 weights
    // infinite. Skipping the following NaN steps would go on for
    // max_nonfinite_in_a_row steps and checkpoint the broken weights.
    std::fs::write(
        &cfg,
        TINY.replace("lr = 1e-3\ngrad_clip = 1.0", "lr = 1e39"),
    )
    .unwrap();
    let out = dir.path().join("run");
    let failed = train(&cfg, &out, &[]);
    let err = stderr(&failed);
    assert!(
        !failed.status.success()
            && err.contains("the update made the weights non-finite")
            && err.contains("optim.lr"),
        "the run must stop at once:\n{err}"
    );
    assert!(
        !out.join("checkpoints").exists()
            || std::fs::read_dir(out.join("checkpoints")).unwrap().count() == 0,
        "a checkpoint of non-finite weights was written"
    );
}

#[test]
fn a_failed_first_start_does_not_bind_the_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let first = dir.path().join("first.toml");
    std::fs::write(&first, TINY).unwrap();
    // A start that fails once the folder exists (a tokenizer that is not there)…
    let missing = dir.path().join("no-tokenizer.json");
    let failed = train(&first, &out, &["--tokenizer", missing.to_str().unwrap()]);
    assert!(!failed.status.success(), "{}", stderr(&failed));
    // …and one on a shard folder that is not there.
    let failed = train_on(&[&dir.path().join("nowhere")], &first, &out, &[]);
    assert!(!failed.status.success(), "{}", stderr(&failed));
    // A corrected retry, with another config, into the same folder.
    let second = dir.path().join("second.toml");
    let corrected = TINY.replace("lr = 1e-3", "lr = 5e-4");
    std::fs::write(&second, &corrected).unwrap();
    ok(train(&second, &out, &["--stop-after", "1"]));
    let recorded = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(recorded.contains("lr = 0.0005"), "{recorded}");
    // Once a checkpoint exists the config is bound.
    let refused = train(&first, &out, &["--stop-after", "1"]);
    assert!(
        !refused.status.success() && stderr(&refused).contains("another config"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn metrics_steps_increase_strictly_across_an_interrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let out = dir.path().join("run");
    ok(train(&cfg, &out, &["--stop-after", "4"]));
    // A kill after step 4's metrics line and before its checkpoint was
    // moved into place: the run resumes from step 3.
    std::fs::rename(
        out.join("checkpoints/step-00000004"),
        out.join("checkpoints/step-00000004.partial"),
    )
    .unwrap();
    // And a line cut short by the kill.
    let mut text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.push_str("{\"step\":5,\"lo");
    std::fs::write(out.join("metrics.jsonl"), text).unwrap();
    ok(train(&cfg, &out, &[]));
    assert_eq!(logged_steps(&out), (1..=6).collect::<Vec<u64>>());
    // Steps are read back unevenly (one step late, at once before a
    // checkpoint); the throughput of each line still covers its own steps:
    // no line reports a burst far above the others.
    let mut rates: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["images_per_s"]
                .as_f64()
                .unwrap()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    assert!(
        rates.last().unwrap() < &(20.0 * median),
        "images/s per line {rates:?}"
    );
}

#[test]
fn embed_names_the_file_and_line_of_bad_text_and_clears_a_stale_partial() {
    let run_dir = trained();
    let dir = tempfile::tempdir().unwrap();
    let texts = dir.path().join("texts.txt");
    let mut bytes = b"small left pleural effusion\n\nno pneumothorax\n".to_vec();
    bytes.extend_from_slice(b"the heart \xff\xfe is enlarged\nlast line\n");
    std::fs::write(&texts, &bytes).unwrap();
    let out = dir.path().join("emb");
    // What a killed run leaves behind.
    let partial = dir.path().join("emb.partial");
    std::fs::write(&partial, b"half a parquet file").unwrap();
    let embed = |texts: &Path| {
        run(
            "train",
            &[
                "embed",
                "--weights",
                run_dir.to_str().unwrap(),
                "--texts",
                texts.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--device",
                "cpu",
            ],
        )
    };
    let failed = embed(&texts);
    let err = stderr(&failed);
    assert!(
        !failed.status.success() && err.contains(&format!("{}:4", texts.display())),
        "the error must name the file and line 4:\n{err}"
    );
    assert!(!partial.exists(), "the stale {} is left", partial.display());
    assert!(!out.exists());

    let good: PathBuf = dir.path().join("good.txt");
    std::fs::write(&good, "no pneumothorax\nsmall effusion\n").unwrap();
    let done = embed(&good);
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(out.is_file() && !partial.exists());
}
