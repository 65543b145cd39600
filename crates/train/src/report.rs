//! `train report`: the paper's results table from evaluation folders. One
//! row per dataset and protocol (zero-shot, linear probe, fine-tuning at a
//! label fraction), with the mean AUC, F1 and accuracy over the classes and
//! their bootstrap intervals, read from the folders' `zero_shot.json`,
//! `linear_probe.json` and `finetune.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use evaluation::zero_shot::{Mean, Summary};
use serde::{Deserialize, Serialize};

use crate::finetune::{FinetuneResult, RESULT_FILE};

/// `zero_shot.json`: the summary and what was evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZeroShotFile {
    /// The label set's name (absent in files of older versions: CheXpert).
    #[serde(default)]
    pub label_set: Option<String>,
    /// The checkpoints (several: an ensemble).
    #[serde(default)]
    pub checkpoints: Vec<PathBuf>,
    /// The scores.
    #[serde(flatten)]
    pub summary: Summary,
}

/// One line of `linear_probe.json`.
#[derive(Debug, Clone, Deserialize)]
struct ProbeEntry {
    fraction: f64,
    summary: Summary,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The label set.
    pub dataset: String,
    /// `zero-shot`, `linear probe`, `fine-tune`, `linear` (fine-tuning with
    /// the encoder frozen).
    pub protocol: String,
    /// The share of the training labels (not for zero-shot).
    pub fraction: Option<f64>,
    /// The weights: the checkpoint folders' names (`+` between an
    /// ensemble's).
    pub weights: String,
    /// Classes scored.
    pub classes: usize,
    /// Mean AUC over the classes.
    pub auc: Mean,
    /// Mean F1.
    pub f1: Mean,
    /// Mean accuracy.
    pub accuracy: Mean,
    /// The evaluation folder.
    pub folder: PathBuf,
}

/// The table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// In the paper's order: dataset, then protocol, then fraction.
    pub rows: Vec<Row>,
}

/// The files an evaluation folder is recognised by.
const RESULT_FILES: [&str; 3] = ["zero_shot.json", "linear_probe.json", RESULT_FILE];

/// The paper's dataset order; others after, by name.
const DATASETS: [&str; 7] = [
    "chexpert",
    "chexpert5",
    "padchest",
    "rsna",
    "nih",
    "covidx",
    "mimic",
];

/// Reads every evaluation folder among `dirs` (a folder, or the folders
/// directly inside it). A folder with none is an error naming the files
/// looked for.
pub fn collect(dirs: &[PathBuf]) -> Result<Report> {
    let mut rows = Vec::new();
    for dir in dirs {
        let mut folders = Vec::new();
        if is_evaluation(dir) {
            folders.push(dir.clone());
        } else {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("{}: cannot list it", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_evaluation(p))
                .collect();
            inside.sort();
            folders.extend(inside);
        }
        if folders.is_empty() {
            bail!(
                "{}: no evaluation here or in the folders inside it (looked for {})",
                dir.display(),
                RESULT_FILES.join(", ")
            );
        }
        for folder in folders {
            rows.extend(read_folder(&folder)?);
        }
    }
    let rank = |d: &str| {
        DATASETS
            .iter()
            .position(|x| *x == d)
            .unwrap_or(DATASETS.len())
    };
    let protocol_rank = |p: &str| match p {
        "zero-shot" => 0,
        "linear probe" => 1,
        "linear" => 2,
        _ => 3,
    };
    rows.sort_by(|a, b| {
        (rank(&a.dataset), &a.dataset, protocol_rank(&a.protocol))
            .cmp(&(rank(&b.dataset), &b.dataset, protocol_rank(&b.protocol)))
            .then(
                a.fraction
                    .unwrap_or(0.0)
                    .total_cmp(&b.fraction.unwrap_or(0.0)),
            )
            .then(a.weights.cmp(&b.weights))
    });
    Ok(Report { rows })
}

fn is_evaluation(dir: &Path) -> bool {
    RESULT_FILES.iter().any(|f| dir.join(f).is_file())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a result file of this version", path.display()))
}

/// A checkpoint path as the table names it: the run folder's name, with
/// the step when a checkpoint inside a run was named.
fn weights_name(path: &Path) -> String {
    let name = |p: &Path| {
        p.file_name().map_or_else(
            || p.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    };
    match path.parent().and_then(Path::parent) {
        Some(run) if path.parent().and_then(Path::file_name) == Some("checkpoints".as_ref()) => {
            format!("{} ({})", name(run), name(path))
        }
        _ => name(path),
    }
}

/// The rows of one evaluation folder.
fn read_folder(dir: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let row = |dataset: String, protocol: &str, fraction, weights: String, s: &Summary| Row {
        dataset,
        protocol: protocol.into(),
        fraction,
        weights,
        classes: s.classes.len(),
        auc: s.mean_auc,
        f1: s.mean_f1,
        accuracy: s.mean_accuracy,
        folder: dir.to_path_buf(),
    };
    let zero_shot = dir.join("zero_shot.json");
    if zero_shot.is_file() {
        let z: ZeroShotFile = read_json(&zero_shot)?;
        let weights = z
            .checkpoints
            .iter()
            .map(|c| weights_name(c))
            .collect::<Vec<_>>()
            .join(" + ");
        rows.push(row(
            z.label_set.unwrap_or_else(|| "chexpert".into()),
            "zero-shot",
            None,
            weights,
            &z.summary,
        ));
    }
    let probe = dir.join("linear_probe.json");
    if probe.is_file() {
        let entries: Vec<ProbeEntry> = read_json(&probe)?;
        for e in entries {
            rows.push(row(
                "chexpert".into(),
                "linear probe",
                Some(e.fraction),
                String::new(),
                &e.summary,
            ));
        }
    }
    let finetune = dir.join(RESULT_FILE);
    if finetune.is_file() {
        let f: FinetuneResult = read_json(&finetune)?;
        rows.push(row(
            f.label_set.clone(),
            if f.freeze { "linear" } else { "fine-tune" },
            Some(f.fraction),
            weights_name(&f.checkpoint),
            &f.summary,
        ));
    }
    Ok(rows)
}

impl Report {
    /// The table as Markdown: one row per evaluation, means with their
    /// 95% intervals, "—" where undefined.
    pub fn to_markdown(&self) -> String {
        let mut out = String::from(
            "| Dataset | Protocol | Labels | Weights | Classes | AUC | F1 | ACC |\n\
             |---|---|---:|---|---:|---|---|---|\n",
        );
        for r in &self.rows {
            out += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.dataset,
                r.protocol,
                r.fraction.map_or("—".into(), |f| format!("{}%", f * 100.0)),
                r.weights,
                r.classes,
                mean(&r.auc),
                mean(&r.f1),
                mean(&r.accuracy),
            );
        }
        out += "\nMeans over the classes where each metric is defined, with 95% bootstrap \
                intervals over the test images; F1 and ACC at thresholds chosen on the \
                validation split. A mean without an interval: its classes were not scored on \
                the same images, or fewer than half of the resamples had the metric defined \
                for every class (too few test images with each class's positives and \
                negatives).\n";
        out
    }
}

fn mean(m: &Mean) -> String {
    match (m.value, m.ci) {
        (None, _) => "—".into(),
        (Some(v), None) => format!("{v:.3}"),
        (Some(v), Some(ci)) => format!("{v:.3} [{:.3}, {:.3}]", ci.low, ci.high),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evaluation::zero_shot::{ClassInput, evaluate};

    fn summary(shift: f32) -> Summary {
        let labels: Vec<i8> = (0..20).map(|i| i8::from(i % 2 == 0)).collect();
        let scores: Vec<f32> = (0..20)
            .map(|i| if i % 2 == 0 { 0.6 + shift } else { 0.4 } + (i as f32) / 100.0)
            .collect();
        evaluate(
            &[ClassInput {
                name: "COVID-19".into(),
                val_scores: scores.clone(),
                val_labels: labels.clone(),
                test_scores: scores,
                test_labels: labels,
            }],
            100,
            0,
        )
    }

    #[test]
    fn rows_come_in_the_papers_order_from_every_kind_of_folder() {
        let dir = tempfile::tempdir().unwrap();
        let zs = dir.path().join("zs-covidx");
        std::fs::create_dir_all(&zs).unwrap();
        let z = ZeroShotFile {
            label_set: Some("covidx".into()),
            checkpoints: vec![PathBuf::from("/runs/a/checkpoints/step-00000010")],
            summary: summary(0.0),
        };
        std::fs::write(zs.join("zero_shot.json"), serde_json::to_vec(&z).unwrap()).unwrap();
        let zs_nih = dir.path().join("zs-nih");
        std::fs::create_dir_all(&zs_nih).unwrap();
        let z = ZeroShotFile {
            label_set: Some("nih".into()),
            checkpoints: vec![PathBuf::from("/runs/a"), PathBuf::from("/runs/b")],
            summary: summary(-0.3),
        };
        std::fs::write(
            zs_nih.join("zero_shot.json"),
            serde_json::to_vec(&z).unwrap(),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("not-an-evaluation")).unwrap();

        let report = collect(&[dir.path().to_path_buf()]).unwrap();
        let order: Vec<(&str, &str)> = report
            .rows
            .iter()
            .map(|r| (r.dataset.as_str(), r.weights.as_str()))
            .collect();
        assert_eq!(order, [("nih", "a + b"), ("covidx", "a (step-00000010)")]);
        let md = report.to_markdown();
        let covidx = md.lines().find(|l| l.starts_with("| covidx")).unwrap();
        let auc = report.rows[1].auc.value.unwrap();
        assert!(covidx.contains(&format!("| {auc:.3} [")), "{md}");

        let e = collect(&[dir.path().join("not-an-evaluation")]).unwrap_err();
        assert!(e.to_string().contains("zero_shot.json"), "{e}");
    }
}
