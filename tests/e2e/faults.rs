//! Bad input: every injected fault becomes a reject with its stage and a
//! reason, the run goes on, counts reconcile, and `--strict` stops it.

use schemas::{Reject, Stage};
use serde_json::Value;

use crate::util::*;

/// The stage at which each kind of fault written by `synth --faults` must be rejected.
fn expected_stage(kind: &str) -> Stage {
    match kind {
        "truncated_dicom" | "garbage_pixel_data" | "unreadable_png" | "truncated_jpeg" => {
            Stage::ImageDecode
        }
        "missing_image" | "missing_png" => Stage::ImageRead,
        "missing_report" => Stage::Report,
        "malformed_csv_row" => Stage::Csv,
        "sidecar_text_mismatch" | "sidecar_span_out_of_range" => Stage::Entities,
        other => panic!("unknown fault kind {other}: teach this test about it"),
    }
}

fn matches(fault: &Value, r: &Reject) -> bool {
    let ids = &fault["ids"];
    let id = |k: &str| ids.get(k).and_then(Value::as_str);
    let image = id("dicom_id")
        .or(id("ImageID"))
        .map(|s| s.trim_end_matches(".png"));
    let study = id("study_id").or(id("StudyID"));
    match image {
        Some(i) if r.stage != Stage::Csv => r.image_id.as_deref() == Some(i),
        _ if fault["kind"] == "malformed_csv_row" => r.path.ends_with(&format!(
            "mimic-cxr-2.0.0-metadata.csv.gz:{}",
            id("line").unwrap()
        )),
        _ => r.study_id.as_deref() == study,
    }
}

#[test]
fn every_fault_is_rejected_with_its_stage_and_counts_reconcile() {
    let tmp = tempfile::tempdir().unwrap();
    let world_dir = tmp.path().join("world");
    world(
        &world_dir,
        &["--studies", "24", "--padchest-images", "12", "--faults"],
    );
    let faults: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(world_dir.join("faults.json")).unwrap())
            .unwrap();
    assert!(faults.len() >= 9, "{faults:#?}");

    let mimic = tmp.path().join("mimic");
    let sidecar = world_dir.join("mimic-cxr/ner_sidecar.jsonl");
    let res = ingest_mimic(
        &world_dir.join("mimic-cxr"),
        &mimic,
        &[
            "--views",
            "all",
            "--ner",
            sidecar.to_str().unwrap(),
            "--short-side",
            "64",
        ],
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let pad = tmp.path().join("padchest");
    let root = world_dir.join("padchest");
    run_ok(
        "ingest",
        &[
            "padchest",
            "--images-only",
            "--projections",
            "all",
            "--root",
            root.to_str().unwrap(),
            "--out",
            pad.to_str().unwrap(),
            "--short-side",
            "64",
        ],
    );

    let mut all = rejects(&mimic);
    all.extend(rejects(&pad));
    for fault in &faults {
        let stage = expected_stage(fault["kind"].as_str().unwrap());
        let hits: Vec<&Reject> = all.iter().filter(|r| matches(fault, r)).collect();
        assert!(
            !hits.is_empty(),
            "fault not rejected: {fault}\nrejects: {all:#?}"
        );
        for r in hits {
            assert_eq!(r.stage, stage, "{fault}: {r:?}");
            assert!(r.reason.len() > 10 && !r.path.is_empty(), "{r:?}");
        }
    }
    // Nothing else is rejected: each reject belongs to a fault.
    for r in &all {
        assert!(
            faults.iter().any(|f| matches(f, r)),
            "unexpected reject {r:?}"
        );
    }
    for dir in [&mimic, &pad] {
        let m = manifest(dir);
        assert!(m.counts.reconciles(), "{:?}", m.counts);
        let listed = rejects(dir);
        assert_eq!(m.counts.rejected_total() as usize, listed.len());
        for stage in Stage::ALL {
            let n = listed.iter().filter(|r| r.stage == stage).count() as u64;
            assert_eq!(
                m.counts.rejected.get(&stage).copied().unwrap_or(0),
                n,
                "{stage:?}"
            );
        }
        assert_eq!(rows(dir).len() as u64, m.counts.written);
    }

    let strict = ingest_mimic(
        &world_dir.join("mimic-cxr"),
        &tmp.path().join("strict"),
        &["--strict"],
    );
    assert!(
        !strict.status.success(),
        "--strict must fail on a faulty release"
    );
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(
        err.contains("strict mode") && err.contains("mimic-cxr"),
        "{err}"
    );
}
