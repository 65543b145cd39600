//! Zero-shot label sets beyond the default: `chexpert5` scores the five
//! CheXpert competition classes, in the paper's order, from the same label
//! columns as the 14-class set (the same scores for the same class);
//! `covidx` and `nih` score the label lists of their releases.

use crate::train::{fixture, trained};
use crate::util::run_ok;

fn zero_shot(label_set: &str, out: &std::path::Path) -> Vec<serde_json::Value> {
    let f = fixture();
    run_ok(
        "train",
        &[
            "eval",
            "zero-shot",
            "--label-set",
            label_set,
            "--checkpoint",
            trained().to_str().unwrap(),
            "--shards",
            f.mimic.to_str().unwrap(),
            "--bootstrap",
            "20",
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
    report["classes"].as_array().unwrap().clone()
}

#[test]
fn chexpert5_scores_the_five_competition_classes() {
    let dir = tempfile::tempdir().unwrap();
    let five = zero_shot("chexpert5", &dir.path().join("five"));
    let names: Vec<&str> = five.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, schemas::CHEXPERT_COMPETITION);
    let all = zero_shot("chexpert", &dir.path().join("all"));
    for class in &five {
        let same = all
            .iter()
            .find(|c| c["name"] == class["name"])
            .expect("in the 14");
        assert_eq!(same["auc"], class["auc"], "{}", class["name"]);
    }
}

/// COVIDx's real images (`../shared/data/covid` as a COVIDx release):
/// `--label-set covidx` scores COVID-19 on exactly the COVIDx test rows,
/// an image labelled pneumonia counting as a negative.
#[test]
fn covidx_scores_covid19_on_the_covidx_rows() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("covidx");
    let want = crate::downstream::covidx_release(&root);
    let shards = dir.path().join("shards");
    run_ok(
        "ingest",
        &[
            "covidx",
            "--root",
            root.to_str().unwrap(),
            "--short-side",
            "64",
            "--out",
            shards.to_str().unwrap(),
        ],
    );
    let out = dir.path().join("eval");
    run_ok(
        "train",
        &[
            "eval",
            "zero-shot",
            "--label-set",
            "covidx",
            "--checkpoint",
            trained().to_str().unwrap(),
            // The MIMIC-CXR folder is ignored: the classes are COVIDx rows'.
            "--shards",
            fixture().mimic.to_str().unwrap(),
            "--shards",
            shards.to_str().unwrap(),
            "--bootstrap",
            "20",
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
    assert_eq!(classes.len(), 1, "{classes:?}");
    let c = &classes[0];
    assert_eq!(c["name"], "COVID-19");
    let test: Vec<&Vec<String>> = want
        .values()
        .filter(|(_, split, _)| *split == "test")
        .map(|(_, _, labels)| labels)
        .collect();
    let positives = test
        .iter()
        .filter(|l| l.iter().any(|x| x == "COVID-19"))
        .count();
    assert_eq!(c["n_test"].as_u64(), Some(test.len() as u64));
    assert_eq!(c["positives_test"].as_u64(), Some(positives as u64));
    assert!(positives > 0 && positives < test.len(), "both label values");
    assert!(c["auc"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)));
}

/// A label set whose release is not among `--shards` is an error naming it.
#[test]
fn a_label_set_without_its_release_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let res = crate::util::run(
        "train",
        &[
            "eval",
            "zero-shot",
            "--label-set",
            "nih",
            "--checkpoint",
            trained().to_str().unwrap(),
            "--shards",
            fixture().padchest.to_str().unwrap(),
            "--out",
            dir.path().join("eval").to_str().unwrap(),
            "--device",
            "cpu",
        ],
    );
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("no nih rows") && err.contains("ingest nih"),
        "{err}"
    );
}
