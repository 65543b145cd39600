//! `ingest padchest --images-only` on the synthetic PadChest tree.

use std::collections::{HashMap, HashSet};

use crate::util::*;

#[test]
fn padchest_rows_are_unpaired_with_parsed_labels_and_a_leak_free_split() {
    let tmp = tempfile::tempdir().unwrap();
    let world_dir = tmp.path().join("world");
    world(&world_dir, &["--studies", "4", "--padchest-images", "60"]);
    let root = world_dir.join("padchest");
    let out = tmp.path().join("shards");
    let args = [
        "padchest",
        "--root",
        root.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--short-side",
        "96",
    ];

    let without_flag = run("ingest", &args);
    assert!(!without_flag.status.success());
    assert!(String::from_utf8_lossy(&without_flag.stderr).contains("--images-only"));

    let mut with_flag = args.to_vec();
    with_flag.push("--images-only");
    run_ok("ingest", &with_flag);
    let m = manifest(&out);
    assert!(m.counts.reconciles(), "{:?}", m.counts);
    assert_eq!(m.counts.rejected_total(), 0, "{:?}", rejects(&out));

    let csv = read_csv_gz(&root.join("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"));
    assert_eq!(m.counts.seen as usize, csv.len());
    let frontal: Vec<_> = csv
        .iter()
        .filter(|r| ["PA", "AP", "AP_horizontal"].contains(&r["Projection"].as_str()))
        .collect();
    assert_eq!(m.counts.written as usize, frontal.len());
    assert!(
        m.counts.filtered > 0,
        "the synthetic world has lateral views to filter"
    );

    let labels_of: HashMap<String, String> = frontal
        .iter()
        .map(|r| {
            (
                r["ImageID"].trim_end_matches(".png").to_string(),
                r["Labels"].clone(),
            )
        })
        .collect();
    let rows = rows(&out);
    let mut split_of_patient: HashMap<String, HashSet<String>> = HashMap::new();
    for r in &rows {
        assert_eq!(r.source, "padchest");
        assert!(!r.paired && r.token_ids.is_none() && r.text.is_none() && r.entity_mask.is_none());
        assert!(r.labels.iter().all(Option::is_none));
        assert_eq!(r.bits_stored, 16);
        assert_eq!(r.image_height.min(r.image_width), 96);
        let raw = &labels_of[&r.image_id];
        let want = ingest::padchest::parse_label_list(raw).unwrap();
        assert_eq!(r.finding_labels, want, "{raw}");
        for l in &r.finding_labels {
            assert!(
                raw.contains(&format!("'{l}'")),
                "{l} must be a whole label of {raw}"
            );
        }
        split_of_patient
            .entry(r.subject_id.clone())
            .or_default()
            .insert(r.split.clone());
    }
    assert!(
        split_of_patient.values().all(|s| s.len() == 1),
        "a patient must not span splits"
    );
    let splits: HashSet<_> = rows.iter().map(|r| r.split.as_str()).collect();
    assert!(splits.contains("train"));
}
