//! `synth`'s CheXpert, ChestX-ray14, COVIDx and RSNA Pneumonia trees read by
//! `ingest chexpert`, `ingest nih`, `ingest covidx` and `ingest rsna`: every
//! image written, none rejected, the counts those of world.json, and labels
//! (and RSNA's boxes) that carry positives and negatives and agree with the
//! drawn lesions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use ingest::shard::Row;

use crate::util::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs one reader on a tree and checks that it wrote every image.
fn ingest_tree(kind: &str, root: &Path, out: &Path, images: u64) -> Vec<Row> {
    run_ok(
        "ingest",
        &[
            kind,
            "--root",
            s(root),
            "--out",
            s(out),
            "--short-side",
            "32",
        ],
    );
    let m = manifest(out);
    assert!(m.counts.reconciles(), "{kind}: {:?}", m.counts);
    assert_eq!(
        (m.counts.seen, m.counts.written, m.counts.rejected_total()),
        (images, images, 0),
        "{kind}: {:?}, rejects {:#?}",
        m.counts,
        rejects(out)
    );
    let rows = rows(out);
    assert_eq!(rows.len() as u64, images);
    rows
}

/// The splits of each patient; fails if a patient is in two.
fn one_split_per_patient(rows: &[Row]) -> HashSet<String> {
    let mut of: HashMap<&str, &str> = HashMap::new();
    for r in rows {
        let was = of.insert(&r.subject_id, &r.split);
        assert!(
            was.is_none_or(|w| w == r.split),
            "patient {} in two splits",
            r.subject_id
        );
    }
    of.values().map(|s| s.to_string()).collect()
}

/// A tree's lesions.jsonl: image id → labels its lesions give.
fn lesion_labels(path: &Path) -> HashMap<String, Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let labels = v["lesions"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|x| x["label"].as_str().map(String::from))
                .collect();
            (v["image_id"].as_str().unwrap().to_string(), labels)
        })
        .collect()
}

#[test]
fn synth_trees_are_read_by_the_downstream_readers_without_rejects() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    run_ok(
        "synth",
        &[
            "--out",
            s(&world),
            "--studies",
            "0",
            "--padchest-images",
            "0",
            "--size",
            "64",
            "--seed",
            "11",
            "--chexpert-images",
            "40",
            "--nih-images",
            "40",
            "--covidx-images",
            "40",
        ],
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(world.join("world.json")).unwrap()).unwrap();
    let tree = |name: &str| &summary["downstream"][name];

    // CheXpert: 1, 0, -1 and blank cells; laterals; three splits.
    let cx = tree("chexpert");
    let rows = ingest_tree(
        "chexpert",
        &world.join(cx["root"].as_str().unwrap()),
        &tmp.path().join("chexpert"),
        cx["images"].as_u64().unwrap(),
    );
    let mut values: BTreeMap<usize, HashSet<Option<i8>>> = BTreeMap::new();
    for r in &rows {
        for (k, v) in r.labels.iter().enumerate() {
            values.entry(k).or_default().insert(*v);
        }
        assert_eq!(r.source, "chexpert");
    }
    let both = values
        .values()
        .filter(|v| v.contains(&Some(1)) && v.contains(&Some(0)))
        .count();
    assert!(both >= 5, "{values:?}");
    let all: HashSet<Option<i8>> = values.values().flatten().copied().collect();
    assert!(
        all.contains(&Some(-1)) && all.contains(&None),
        "no uncertain or blank: {all:?}"
    );
    let views: HashSet<&str> = rows.iter().map(|r| r.view.as_str()).collect();
    assert!(
        ["AP", "PA", "Lateral", "Frontal"]
            .iter()
            .all(|v| views.contains(v)),
        "{views:?}"
    );
    let splits = one_split_per_patient(&rows);
    assert_eq!(
        splits,
        ["train", "validate", "test"].map(String::from).into()
    );
    let per_split = |rows: &[Row]| -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for r in rows {
            *m.entry(r.split.clone()).or_insert(0) += 1;
        }
        m
    };
    let want: BTreeMap<String, u64> = cx["images_per_split"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let k = if k == "valid" { "validate" } else { k.as_str() };
            (k.to_string(), v.as_u64().unwrap())
        })
        .collect();
    assert_eq!(per_split(&rows), want);

    // NIH: the classes of the drawn lesions, No Finding as the empty list,
    // test patients from test_list.txt.
    let nih = tree("nih");
    let nih_root = world.join(nih["root"].as_str().unwrap());
    let rows = ingest_tree(
        "nih",
        &nih_root,
        &tmp.path().join("nih"),
        nih["images"].as_u64().unwrap(),
    );
    let drawn = lesion_labels(&nih_root.join("lesions.jsonl"));
    let test_list = std::fs::read_to_string(nih_root.join("test_list.txt")).unwrap();
    let mut positives: HashMap<&str, usize> = HashMap::new();
    for r in &rows {
        let mut want = drawn[&r.image_id].clone();
        want.sort();
        want.dedup();
        let mut got = r.finding_labels.clone();
        got.sort();
        assert_eq!(got, want, "{}", r.image_id);
        assert_eq!(
            r.split == "test",
            test_list.lines().any(|l| l == r.image_id)
        );
        assert_eq!(r.bits_stored, 8);
        for l in &r.finding_labels {
            *positives.entry(l).or_default() += 1;
        }
    }
    let n = rows.len();
    let several = positives.values().filter(|&&k| k > 0 && k < n).count();
    assert!(several >= 5, "{positives:?}");
    assert!(
        rows.iter().any(|r| r.finding_labels.is_empty()),
        "no No Finding row"
    );
    let splits = one_split_per_patient(&rows);
    assert!(
        splits.contains("test") && splits.contains("train"),
        "{splits:?}"
    );
    let patients: HashSet<&str> = rows.iter().map(|r| r.subject_id.as_str()).collect();
    assert!(patients.len() < n, "every patient has one image");
    assert_eq!(patients.len() as u64, nih["patients"].as_u64().unwrap());

    // COVIDx: COVID-19 where a pneumonia-like opacity is drawn, else negative.
    let cov = tree("covidx");
    let cov_root = world.join(cov["root"].as_str().unwrap());
    let rows = ingest_tree(
        "covidx",
        &cov_root,
        &tmp.path().join("covidx"),
        cov["images"].as_u64().unwrap(),
    );
    let drawn = lesion_labels(&cov_root.join("lesions.jsonl"));
    let mut labels = BTreeMap::new();
    for r in &rows {
        let positive = drawn[&r.image_id].iter().any(|l| l == "positive");
        let want: Vec<String> = if positive {
            vec!["COVID-19".into()]
        } else {
            vec![]
        };
        assert_eq!(r.finding_labels, want, "{}", r.image_id);
        *labels.entry(positive).or_insert(0) += 1;
    }
    assert!(labels.len() == 2, "{labels:?}");
    assert_eq!(
        labels[&true],
        cov["labels"]["positive"].as_u64().unwrap() as i32
    );
    assert_eq!(
        one_split_per_patient(&rows),
        ["train", "validate", "test"].map(String::from).into()
    );
}

/// The boxes of a box list's line as `[x0, y0, x1, y1]`.
fn bboxes(line: &serde_json::Value) -> Vec<[u64; 4]> {
    line["lesions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let b = l["bbox"].as_array().unwrap();
            [0, 1, 2, 3].map(|i| b[i].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn synth_rsna_tree_is_read_by_ingest_rsna_with_its_boxes() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    run_ok(
        "synth",
        &[
            "--out",
            s(&world),
            "--studies",
            "0",
            "--padchest-images",
            "0",
            "--size",
            "64",
            "--seed",
            "12",
            "--rsna-images",
            "30",
        ],
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(world.join("world.json")).unwrap()).unwrap();
    let tree = &summary["downstream"]["rsna"];
    let root = world.join(tree["root"].as_str().unwrap());
    let out = tmp.path().join("rsna");
    let rows = ingest_tree("rsna", &root, &out, tree["images"].as_u64().unwrap());
    assert_eq!(rows.len(), 30);

    // The labels file: patientId -> boxes (empty for Target 0).
    let text = std::fs::read_to_string(root.join("stage_2_train_labels.csv")).unwrap();
    let mut labels: BTreeMap<String, Vec<[f64; 4]>> = BTreeMap::new();
    for l in text.lines().skip(1) {
        let f: Vec<&str> = l.split(',').collect();
        let boxes = labels.entry(f[0].to_string()).or_default();
        if f[5] == "1" {
            boxes.push([1, 2, 3, 4].map(|i| f[i].parse::<f64>().unwrap()));
        }
    }
    let positives = labels.values().filter(|b| !b.is_empty()).count();
    assert!(
        positives >= 5 && positives + 5 <= labels.len(),
        "{positives} positive of {}",
        labels.len()
    );
    assert!(
        labels.values().any(|b| b.len() >= 2),
        "no patient with several boxes"
    );
    assert_eq!(
        positives as u64,
        tree["labels"]["Lung Opacity"].as_u64().unwrap()
    );
    let total: usize = labels.values().map(Vec::len).sum();
    assert_eq!(total as u64, tree["boxes"].as_u64().unwrap());

    // One row per patient, pneumonia exactly for Target 1.
    let mut by_id: HashMap<&str, &Row> = HashMap::new();
    for r in &rows {
        assert_eq!(r.source, "rsna");
        assert_eq!(
            (r.subject_id.as_str(), r.study_id.as_str()),
            (r.image_id.as_str(), r.image_id.as_str())
        );
        assert_eq!(
            (r.orig_cols, r.orig_rows, r.bits_stored),
            (64, 64, 8),
            "{}",
            r.image_id
        );
        let want: Vec<String> = if labels[&r.image_id].is_empty() {
            vec![]
        } else {
            vec!["pneumonia".into()]
        };
        assert_eq!(r.finding_labels, want, "{}", r.image_id);
        by_id.insert(&r.image_id, r);
    }
    assert_eq!(by_id.len(), labels.len());

    // boxes.jsonl: a line per positive patient, its boxes those of the
    // labels file scaled from the DICOM's frame into the stored image's
    // (start rounded down, exclusive end rounded up), and so the drawn
    // lesions' boxes scaled the same way.
    let drawn: HashMap<String, serde_json::Value> =
        std::fs::read_to_string(root.join("lesions.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["image_id"].as_str().unwrap().to_string(), v)
            })
            .collect();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("boxes.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), positives);
    for line in &lines {
        let id = line["image_id"].as_str().unwrap();
        let r = by_id[id];
        let (w, h) = (r.image_width as f64, r.image_height as f64);
        assert_eq!(
            (line["width"].as_f64(), line["height"].as_f64()),
            (Some(w), Some(h))
        );
        let (cols, rows) = (r.orig_cols as f64, r.orig_rows as f64);
        let scale = |[x0, y0, x1, y1]: [f64; 4]| {
            [
                (x0 * w / cols).floor(),
                (y0 * h / rows).floor(),
                (x1 * w / cols).ceil(),
                (y1 * h / rows).ceil(),
            ]
            .map(|v| v as u64)
        };
        let want: Vec<[u64; 4]> = labels[id]
            .iter()
            .map(|&[x, y, bw, bh]| scale([x, y, x + bw, y + bh]))
            .collect();
        assert_eq!(bboxes(line), want, "{id}");
        let from_lesions: Vec<[u64; 4]> = drawn[id]["lesions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["label"] == "Lung Opacity")
            .map(|l| {
                let b = l["bbox"].as_array().unwrap();
                scale([0, 1, 2, 3].map(|i| b[i].as_f64().unwrap()))
            })
            .collect();
        assert_eq!(from_lesions, want, "{id}");
    }

    // The view is each DICOM's ViewPosition; `--views PA` keeps the PA
    // patients, counts the AP ones as filtered, and gives them no boxes line.
    let pa: BTreeMap<&str, bool> = rows
        .iter()
        .map(|r| {
            assert!(["PA", "AP"].contains(&r.view.as_str()), "{r:?}");
            (r.image_id.as_str(), r.view == "PA")
        })
        .collect();
    let n_pa = pa.values().filter(|&&p| p).count();
    assert!(n_pa > 0 && n_pa < rows.len(), "{n_pa} PA of {}", rows.len());
    let out_pa = tmp.path().join("rsna-pa");
    run_ok(
        "ingest",
        &[
            "rsna",
            "--root",
            s(&root),
            "--out",
            s(&out_pa),
            "--short-side",
            "32",
            "--views",
            "pa",
        ],
    );
    let m = manifest(&out_pa);
    assert!(m.counts.reconciles(), "{:?}", m.counts);
    assert_eq!(
        (
            m.counts.written,
            m.counts.filtered,
            m.counts.rejected_total()
        ),
        (n_pa as u64, (rows.len() - n_pa) as u64, 0)
    );
    let kept = crate::util::rows(&out_pa);
    assert!(
        kept.iter()
            .all(|r| r.view == "PA" && pa[r.image_id.as_str()])
    );
    let lines_pa = std::fs::read_to_string(out_pa.join("boxes.jsonl")).unwrap();
    let want_lines: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| pa[l["image_id"].as_str().unwrap()])
        .collect();
    assert_eq!(lines_pa.lines().count(), want_lines.len());
}
