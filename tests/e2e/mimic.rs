//! `ingest mimic` on the synthetic world: counts, ids, labels, sections,
//! tokens, entities; determinism; the JPEG variant; faults and `--strict`.

use std::collections::{HashMap, HashSet};

use schemas::CHEXPERT_CLASSES;
use text::tokenize::ClipTokenizer;

use crate::util::*;

const WORLD: &[&str] = &[
    "--studies",
    "40",
    "--padchest-images",
    "20",
    "--mimic-format",
    "both",
];

#[test]
fn mimic_rows_match_the_release_csvs_and_carry_tokens_and_entities() {
    let tmp = tempfile::tempdir().unwrap();
    let world_dir = tmp.path().join("world");
    world(&world_dir, WORLD);
    let root = world_dir.join("mimic-cxr");
    let out = tmp.path().join("shards");
    let sidecar = root.join("ner_sidecar.jsonl");
    let res = ingest_mimic(
        &root,
        &out,
        &["--ner", sidecar.to_str().unwrap(), "--short-side", "128"],
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );

    let m = manifest(&out);
    assert!(m.counts.reconciles(), "{:?}", m.counts);
    assert_eq!(m.counts.rejected_total(), 0, "{:?}", rejects(&out));
    let meta = read_csv_gz(&root.join("mimic-cxr-2.0.0-metadata.csv.gz"));
    let frontal: HashSet<String> = meta
        .iter()
        .filter(|r| r["ViewPosition"] == "PA" || r["ViewPosition"] == "AP")
        .map(|r| r["dicom_id"].clone())
        .collect();
    assert_eq!(m.counts.seen as usize, meta.len());
    assert_eq!(m.counts.written as usize, frontal.len());
    assert_eq!(m.counts.filtered as usize, meta.len() - frontal.len());

    let rows = rows(&out);
    let ids: HashSet<String> = rows.iter().map(|r| r.image_id.clone()).collect();
    assert_eq!(ids, frontal);

    let split: HashMap<String, String> = read_csv_gz(&root.join("mimic-cxr-2.0.0-split.csv.gz"))
        .into_iter()
        .map(|r| (r["dicom_id"].clone(), r["split"].clone()))
        .collect();
    let labels: HashMap<(String, String), Vec<Option<i8>>> =
        read_csv_gz(&root.join("mimic-cxr-2.0.0-chexpert.csv.gz"))
            .into_iter()
            .map(|r| {
                let v = CHEXPERT_CLASSES
                    .iter()
                    .map(|(name, _)| match r[*name].as_str() {
                        "" => None,
                        s => Some(s.parse::<f32>().unwrap() as i8),
                    })
                    .collect();
                ((r["subject_id"].clone(), r["study_id"].clone()), v)
            })
            .collect();
    let sidecar_spans: HashMap<String, serde_json::Value> = std::fs::read_to_string(&sidecar)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["study_id"].as_str().unwrap().to_string(), v)
        })
        .collect();
    let tokenizer = ClipTokenizer::from_file(&tokenizer()).unwrap();
    let mut entity_tokens = 0;
    for r in &rows {
        assert_eq!(r.source, "mimic");
        assert!(r.paired);
        assert_eq!(r.split, split[&r.image_id], "{}", r.image_id);
        let want = &labels[&(r.subject_id.clone(), r.study_id.clone())];
        assert_eq!(r.labels.to_vec(), *want, "{}", r.image_id);
        assert_eq!(r.image_height.min(r.image_width), 128);
        assert_eq!(
            r.image.len(),
            (r.image_height * r.image_width) as usize,
            "raw encoding"
        );
        assert!([8, 12].contains(&r.bits_stored), "{}", r.bits_stored); // JPEG baseline DICOMs are 8-bit

        let text = r.text.as_deref().expect("training text");
        assert!(r.findings.is_some() || r.impression.is_some() || r.last_paragraph.is_some());
        let ids = r.token_ids.as_ref().unwrap();
        assert_eq!(*ids, tokenizer.encode(text).unwrap().ids);
        assert_eq!((ids[0], *ids.last().unwrap()), (49406, 49407));
        assert!(ids.len() <= 77);
        assert_eq!(r.truncated, Some(tokenizer.encode(text).unwrap().truncated));

        assert_eq!(r.entity_source.as_deref(), Some("sidecar"));
        let side = &sidecar_spans[&r.study_id];
        assert_eq!(side["text"].as_str().unwrap(), text);
        let spans = r.entity_spans.as_ref().unwrap();
        let want: Vec<(usize, usize)> = side["entities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["start"].as_u64().unwrap() as usize,
                    e["end"].as_u64().unwrap() as usize,
                )
            })
            .collect();
        assert_eq!(
            spans.iter().map(|s| (s.start, s.end)).collect::<Vec<_>>(),
            want
        );
        let mask = r.entity_mask.as_ref().unwrap();
        assert_eq!(mask.len(), ids.len());
        assert!(
            !mask[0] && !mask[mask.len() - 1],
            "SOT/EOT are never entities"
        );
        entity_tokens += mask.iter().filter(|m| **m).count();
    }
    assert!(
        entity_tokens > rows.len(),
        "entities must reach the tokens: {entity_tokens}"
    );
}

#[test]
fn same_input_gives_byte_identical_output_and_jpg_release_gives_same_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let world_dir = tmp.path().join("world");
    world(&world_dir, WORLD);
    let (a, b, j) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("jpg"),
    );
    for (root, out, threads) in [
        ("mimic-cxr", &a, "1"),
        ("mimic-cxr", &b, "2"),
        ("mimic-cxr-jpg", &j, "2"),
    ] {
        let res = ingest_mimic(
            &world_dir.join(root),
            out,
            &["--threads", threads, "--short-side", "96"],
        );
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
    }
    let (fa, fb) = (folder_bytes(&a), folder_bytes(&b));
    assert!(fa.keys().any(|k| k.ends_with(".parquet")));
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
    for (name, bytes) in &fa {
        assert!(bytes == &fb[name], "{name} differs between runs");
    }
    let (ra, rj) = (rows(&a), rows(&j));
    let key = |r: &ingest::shard::Row| (r.image_id.clone(), r.text.clone(), r.labels);
    assert_eq!(
        ra.iter().map(key).collect::<Vec<_>>(),
        rj.iter().map(key).collect::<Vec<_>>()
    );
    assert!(
        rj.iter()
            .all(|r| r.entity_source.as_deref() == Some("lexicon") && r.bits_stored == 8)
    );
}
