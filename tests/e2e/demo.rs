//! The README's main command, `scripts/demo.sh`, run end to end on the
//! debug binaries: the small model pre-trained on the synthetic world must
//! learn, i.e. its zero-shot mean AUC on the test split must be clearly
//! above chance.

use std::process::Command;

use crate::util::{bin, workspace};

/// The demo's zero-shot mean AUC must reach this (chance is 0.5).
const MIN_MEAN_AUC: f64 = 0.6;

#[test]
fn the_demo_learns_above_chance() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let bin_dir = bin("train").parent().unwrap().to_path_buf();
    let run = Command::new("bash")
        .arg(workspace().join("scripts/demo.sh"))
        .arg(&out)
        .env("BIN", &bin_dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running scripts/demo.sh");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval/zero_shot.json")).unwrap())
            .unwrap();
    let auc = report["mean_auc"]["value"].as_f64().expect("a mean AUC");
    // The figure, for the test log.
    eprintln!(
        "{}",
        stdout
            .lines()
            .skip_while(|l| !l.contains("zero-shot mean AUC"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let classes = report["mean_auc"]["classes"].as_u64().unwrap();
    assert!(
        classes >= 8,
        "only {classes} classes could be scored:\n{stdout}"
    );
    assert!(
        auc >= MIN_MEAN_AUC,
        "zero-shot mean AUC {auc:.3} is below {MIN_MEAN_AUC}:\n{stdout}"
    );
    // The PadChest evaluation ran on the PadChest findings (its figure is
    // stated, not required: 30 test images are too few for a threshold).
    let padchest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("eval-padchest/zero_shot.json")).unwrap(),
    )
    .unwrap();
    let scored = padchest["mean_auc"]["classes"].as_u64().unwrap();
    assert!(
        scored >= 5,
        "only {scored} PadChest findings could be scored:\n{stdout}"
    );
    // The summary the demo ends with names the figure.
    assert!(stdout.contains("zero-shot mean AUC"), "{stdout}");

    // The results table: a row per evaluation, the downstream ones
    // included (zero-shot on the synthetic CheXpert test set, the 10%
    // fine-tune on the synthetic ChestX-ray14 set).
    let table = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Dataset"))
        .collect();
    let row = |dataset: &str, protocol: &str| {
        rows.iter()
            .find(|r| r.starts_with(&format!("| {dataset} | {protocol} |")))
            .unwrap_or_else(|| panic!("no {dataset} {protocol} row:\n{table}"))
    };
    row("chexpert", "zero-shot");
    row("chexpert5", "zero-shot");
    row("padchest", "zero-shot");
    assert!(row("nih", "fine-tune").contains("| 10% |"), "{table}");
    assert_eq!(rows.len(), 4, "{table}");
    let finetune: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("finetune-nih-10/finetune.json")).unwrap(),
    )
    .unwrap();
    assert!(
        finetune["summary"]["mean_auc"]["value"].is_number(),
        "{finetune}"
    );
}
