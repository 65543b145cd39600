//! Zero-shot label sets beyond the default: `chexpert5` scores the five
//! CheXpert competition classes, in the paper's order, from the same label
//! columns as the 14-class set (the same scores for the same class).

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
