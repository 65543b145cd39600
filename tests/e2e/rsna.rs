//! `ingest rsna` over a tree laid out as the RSNA Pneumonia Detection
//! Challenge release, its DICOMs the real JPEG baseline files of
//! `../shared/data/dicom` under patientId names: one row per patient, the
//! boxes in `boxes.jsonl` scaled into the stored images, inconsistent
//! patients rejected, a seeded patient-level split, byte-identical reruns.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use schemas::Stage;

use crate::util::*;

/// A patient with three boxes on the 1024 × 1024 SIIM chest.
const THREE: &str = "00436515-870c-4b36-a041-de91049b9ab4";
/// A patient with one box on the RG1 chest, 460 columns × 488 rows.
const TALL: &str = "0a03fbf6-3c9a-4e2e-89ce-c7629ba7b7da";
/// A negative patient.
const NEGATIVE: &str = "0004cfab-14fd-4e49-80ba-63a80b6bddd6";
/// Listed in the labels, no DICOM.
const MISSING: &str = "1c44e0a4-4612-438f-9a83-8d5bf919cb67";
/// Its DICOM is cut short.
const CORRUPT: &str = "1d2e3f40-0000-4000-8000-00000000c0de";
/// Target 1 with a box on one line, Target 0 on another.
const CONFLICT: &str = "2b6c1a00-0000-4000-8000-000000000001";
/// Target 0, detailed class `Lung Opacity`.
const CONTRADICT: &str = "2b6c1a00-0000-4000-8000-000000000002";
/// Target 1 without a box.
const NO_BOX: &str = "2b6c1a00-0000-4000-8000-000000000003";
/// A coordinate that is not a number.
const BAD_COORD: &str = "2b6c1a00-0000-4000-8000-000000000004";

/// Generated patients beside the named ones (every fourth positive).
const OTHERS: u32 = 36;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn link(src: &Path, dst: &Path) {
    std::os::unix::fs::symlink(src, dst)
        .unwrap_or_else(|e| panic!("{} -> {}: {e}", dst.display(), src.display()));
}

fn other(i: u32) -> String {
    format!("{:08x}-5eed-4000-8000-{:012x}", 0x3000_0000 + i, i)
}

/// Lays out the release in `root` and returns the written patients with
/// their Target.
fn rsna_release(root: &Path) -> BTreeMap<String, bool> {
    let dicom = shared().join("data/dicom");
    let images = root.join("stage_2_train_images");
    std::fs::create_dir_all(&images).unwrap();
    let put = |id: &str, file: &str| link(&dicom.join(file), &images.join(format!("{id}.dcm")));
    let mut labels = String::from("patientId,x,y,width,height,Target\n");
    let mut classes = String::from("patientId,class\n");
    let mut line = |id: &str, bx: &str, target: u8, class: &str| {
        labels.push_str(&format!("{id},{bx},{target}\n"));
        classes.push_str(&format!("{id},{class}\n"));
    };
    let mut want = BTreeMap::new();

    put(THREE, "siim_cr_chest_jpeg_baseline_sc.dcm");
    for bx in [
        "264.0,152.0,213.0,379.0",
        "562,152,256,453",
        "100.5,700,60,80.25",
    ] {
        line(THREE, bx, 1, "Lung Opacity");
    }
    want.insert(THREE.to_string(), true);
    put(TALL, "rg1_small_jpeg_baseline.dcm");
    line(TALL, "115,122,230,244", 1, "Lung Opacity");
    want.insert(TALL.to_string(), true);
    put(NEGATIVE, "rg1_small_jpeg_baseline.dcm");
    line(NEGATIVE, ",,,", 0, "No Lung Opacity / Not Normal");
    want.insert(NEGATIVE.to_string(), false);
    for i in 0..OTHERS {
        let id = other(i);
        put(&id, "rg1_small_jpeg_baseline.dcm");
        if i % 4 == 0 {
            line(&id, "40,50,120,200", 1, "Lung Opacity");
        } else {
            line(&id, ",,,", 0, "Normal");
        }
        want.insert(id, i % 4 == 0);
    }

    line(MISSING, ",,,", 0, "Normal");
    put(CORRUPT, "corrupt_truncated_explicit_le.dcm");
    line(CORRUPT, ",,,", 0, "Normal");
    for id in [CONFLICT, CONTRADICT, NO_BOX, BAD_COORD] {
        put(id, "rg1_small_jpeg_baseline.dcm");
    }
    line(CONFLICT, "10,10,50,50", 1, "Lung Opacity");
    line(CONFLICT, ",,,", 0, "Lung Opacity");
    line(CONTRADICT, ",,,", 0, "Lung Opacity");
    line(NO_BOX, ",,,", 1, "Lung Opacity");
    line(BAD_COORD, "12,abc,50,50", 1, "Lung Opacity");
    std::fs::write(root.join("stage_2_train_labels.csv"), labels).unwrap();
    std::fs::write(root.join("stage_2_detailed_class_info.csv"), classes).unwrap();
    want
}

/// Runs `ingest rsna` over `root` into `out` with `extra` arguments.
fn ingest(root: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "rsna",
        "--root",
        s(root),
        "--out",
        s(out),
        "--short-side",
        "64",
        "--rows-per-shard",
        "8",
    ];
    args.extend_from_slice(extra);
    run_ok("ingest", &args);
}

/// The split of each written patient, checking that none is in two.
fn splits(out: &Path) -> BTreeMap<String, String> {
    let mut of: BTreeMap<String, String> = BTreeMap::new();
    for r in rows(out) {
        if let Some(before) = of.insert(r.subject_id.clone(), r.split.clone()) {
            assert_eq!(before, r.split, "patient {} in two splits", r.subject_id);
        }
    }
    of
}

fn boxes_lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("boxes.jsonl"))
        .expect("boxes.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// The keys of a JSON object, sorted.
fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

/// The keys of a line and of a lesion of the synthetic world's `lesions.jsonl`.
fn world_lesion_keys(dir: &Path) -> (Vec<String>, Vec<String>) {
    run_ok(
        "synth",
        &[
            "--out",
            s(dir),
            "--studies",
            "20",
            "--padchest-images",
            "2",
            "--size",
            "64",
        ],
    );
    let text = std::fs::read_to_string(dir.join("lesions.jsonl")).unwrap();
    let line: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| !l["lesions"].as_array().unwrap().is_empty())
        .expect("a world image with lesions");
    (keys(&line), keys(&line["lesions"][0]))
}

#[test]
fn rsna_release_writes_one_row_per_patient_with_scaled_boxes_and_rejects_inconsistent_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rsna");
    let want = rsna_release(&root);
    let out = tmp.path().join("shards");
    ingest(&root, &out, &[]);

    let m = manifest(&out);
    assert_eq!(m.source, schemas::Source::Rsna);
    assert!(m.counts.reconciles(), "{:?}", m.counts);
    assert_eq!(m.counts.seen, want.len() as u64 + 6);
    assert_eq!(m.counts.written, want.len() as u64);
    let by_stage = |s: Stage| m.counts.rejected.get(&s).copied().unwrap_or(0);
    assert_eq!(
        [Stage::Csv, Stage::ImageRead, Stage::ImageDecode].map(by_stage),
        [4, 1, 1],
        "{:?}",
        m.counts
    );

    let rejects = rejects(&out);
    let reject = |id: &str| {
        rejects
            .iter()
            .find(|r| r.image_id.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no reject for {id}: {rejects:#?}"))
    };
    let r = reject(MISSING);
    assert_eq!(r.stage, Stage::ImageRead);
    assert!(
        r.path
            .ends_with(&format!("stage_2_train_images/{MISSING}.dcm"))
    );
    assert!(r.reason.contains("DICOM not found"), "{r:?}");
    let r = reject(CORRUPT);
    assert_eq!(r.stage, Stage::ImageDecode, "{r:?}");
    assert!(r.path.ends_with(&format!("{CORRUPT}.dcm")));
    for (id, file, reason) in [
        (CONFLICT, "stage_2_train_labels.csv", "conflicting Target"),
        (
            CONTRADICT,
            "stage_2_detailed_class_info.csv",
            "\"Lung Opacity\" contradicts Target 0",
        ),
        (NO_BOX, "stage_2_train_labels.csv", "Target 1 without a box"),
        (BAD_COORD, "stage_2_train_labels.csv", "not all numbers"),
    ] {
        let r = reject(id);
        assert_eq!(r.stage, Stage::Csv, "{r:?}");
        let (file_at, line) = r.path.rsplit_once(':').unwrap();
        assert!(
            file_at.ends_with(file) && line.parse::<u32>().is_ok(),
            "{r:?}"
        );
        assert!(r.reason.contains(reason), "{r:?}");
    }

    let written = rows(&out);
    assert_eq!(written.len(), want.len());
    for r in &written {
        let positive = want[&r.image_id];
        assert_eq!(
            r.finding_labels,
            if positive { vec!["pneumonia"] } else { vec![] },
            "{}",
            r.image_id
        );
        assert_eq!((&r.subject_id, &r.study_id), (&r.image_id, &r.image_id));
        assert_eq!(r.source, "rsna");
        // Every DICOM of ../shared/data/dicom records ViewPosition PA.
        assert_eq!(r.view, "PA", "{}", r.image_id);
        assert!(!r.paired && r.text.is_none() && r.labels.iter().all(Option::is_none));
        assert_eq!(r.image_height.min(r.image_width), 64);
    }
    let split = splits(&out);
    for s in ["train", "validate", "test"] {
        assert!(split.values().any(|v| v == s), "no patient in {s}");
    }

    // One line per written positive patient, in patientId order; the boxes
    // scaled by the resize (1024 → 64: by 1/16; 460 × 488 → 64 × 68) and
    // widened to whole pixels.
    let lines = boxes_lines(&out);
    let positives: Vec<&String> = want.iter().filter(|(_, p)| **p).map(|(id, _)| id).collect();
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["image_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, positives);
    let line = |id: &str| lines.iter().find(|l| l["image_id"] == id).unwrap();
    let bboxes = |id: &str| -> Vec<Vec<u64>> {
        line(id)["lesions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                assert_eq!(b["class"], "Pneumonia");
                b["bbox"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect()
            })
            .collect()
    };
    // 264/16 = 16.5, 152/16 = 9.5, 477/16 = 29.8, 531/16 = 33.2; 562/16 =
    // 35.1, 818/16 = 51.1, 605/16 = 37.8; 100.5/16 = 6.3, 700/16 = 43.75,
    // 160.5/16 = 10.03, 780.25/16 = 48.8.
    assert_eq!(
        bboxes(THREE),
        [
            vec![16, 9, 30, 34],
            vec![35, 9, 52, 38],
            vec![6, 43, 11, 49]
        ]
    );
    // Each axis by its own factor, ends on pixel edges kept exact:
    // x 115·64/460 = 16, 345·64/460 = 48; y 122·68/488 = 17, 366·68/488 = 51.
    assert_eq!(bboxes(TALL), [vec![16, 17, 48, 51]]);
    let row = |id: &str| written.iter().find(|r| r.image_id == id).unwrap();
    for id in [THREE, TALL] {
        let (l, r) = (line(id), row(id));
        assert_eq!(
            (l["width"].as_i64(), l["height"].as_i64()),
            (Some(r.image_width as i64), Some(r.image_height as i64))
        );
        let shard = l["path"].as_str().unwrap();
        assert!(m.shards.iter().any(|s| s.file == shard), "{shard}");
    }
    assert_eq!((row(TALL).image_width, row(TALL).image_height), (64, 68));
    // The world's lesion format, key for key.
    let (line_keys, lesion_keys) = world_lesion_keys(&tmp.path().join("world"));
    assert_eq!(keys(line(THREE)), line_keys);
    assert_eq!(keys(&line(THREE)["lesions"][0]), lesion_keys);

    // Running again over the finished folder changes nothing; a fresh run
    // with the same seed writes the same bytes.
    let before = folder_bytes(&out);
    assert!(before.contains_key("boxes.jsonl"));
    ingest(&root, &out, &[]);
    assert_eq!(folder_bytes(&out), before, "rerun over a finished folder");
    let again = tmp.path().join("again");
    ingest(&root, &again, &["--seed", "0"]);
    assert_same_bytes(&before, &folder_bytes(&again));
}

fn assert_same_bytes(a: &BTreeMap<String, Vec<u8>>, b: &BTreeMap<String, Vec<u8>>) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, bytes) in a {
        assert!(bytes == &b[name], "{name} differs");
    }
}

#[test]
fn rsna_split_is_by_patient_and_decided_by_the_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rsna");
    rsna_release(&root);
    let run = |name: &str, seed: &str| -> BTreeMap<String, String> {
        let out = tmp.path().join(name);
        ingest(&root, &out, &["--seed", seed]);
        splits(&out)
    };
    let (a, b, c) = (run("a", "7"), run("b", "7"), run("c", "8"));
    assert_eq!(a, b, "the same seed gives the same split");
    let moved = a.iter().filter(|(id, split)| c[*id] != **split).count();
    assert!(moved > 0, "another seed moves patients");
    // Shares that cannot be shares are refused before any work.
    let res = run_cmd_err(&root, &tmp.path().join("bad"), &["--train-fraction", "0.9"]);
    assert!(res.contains("at most 1"), "{res}");
}

/// Runs `ingest rsna`, expects it to fail, and returns its stderr.
fn run_cmd_err(root: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["rsna", "--root", s(root), "--out", s(out)];
    args.extend_from_slice(extra);
    let res = run("ingest", &args);
    assert!(!res.status.success(), "ingest rsna {args:?} succeeded");
    String::from_utf8_lossy(&res.stderr).into_owned()
}

/// A run killed after some shards, or after its manifest but before
/// `boxes.jsonl`, is completed by running it again, to the bytes of an
/// uninterrupted run.
#[test]
fn rsna_interrupted_run_completes_to_the_uninterrupted_runs_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rsna");
    rsna_release(&root);
    let whole = tmp.path().join("whole");
    ingest(&root, &whole, &[]);
    let want = folder_bytes(&whole);
    assert!(manifest(&whole).shards.len() > 2);

    // Killed between the manifest and boxes.jsonl (a temporary file left).
    let out = tmp.path().join("late");
    ingest(&root, &out, &[]);
    std::fs::remove_file(out.join("boxes.jsonl")).unwrap();
    std::fs::write(out.join("boxes.jsonl.tmp"), b"{\"half").unwrap();
    ingest(&root, &out, &[]);
    assert_same_bytes(&want, &folder_bytes(&out));

    // Killed before the manifest: one shard and the boxes not written yet.
    let out = tmp.path().join("early");
    ingest(&root, &out, &[]);
    let victims: Vec<PathBuf> = ["manifest.json", "boxes.jsonl", "shard-00001.parquet"]
        .iter()
        .map(|f| out.join(f))
        .collect();
    for v in &victims {
        std::fs::remove_file(v).unwrap();
    }
    ingest(&root, &out, &[]);
    assert_same_bytes(&want, &folder_bytes(&out));
    let shard_rows: HashSet<String> = rows(&out).into_iter().map(|r| r.image_id).collect();
    assert_eq!(shard_rows.len() as u64, manifest(&out).counts.written);
}

#[test]
fn rsna_unrecognised_layout_names_the_labels_file() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = run_cmd_err(&empty, &tmp.path().join("out"), &[]);
    assert!(
        err.contains("stage_2_train_labels.csv") && err.contains("stage_2_train_images/"),
        "{err}"
    );
}
