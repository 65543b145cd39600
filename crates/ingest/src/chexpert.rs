//! CheXpert as released: image-only rows with the 14 CheXpert label columns.
//!
//! ```text
//! root/                          the folder above the dataset folder
//!   CheXpert-v1.0/  or  CheXpert-v1.0-small/
//!     train.csv  valid.csv  [test.csv | test_labels.csv]
//!     train/patient00001/study1/view1_frontal.jpg ...
//! ```
//!
//! `Path` is relative to the folder above the dataset folder, as released
//! (`CheXpert-v1.0-small/train/...`); a path that does not start with the
//! dataset folder's name (the test labels' `test/...`) is taken relative to
//! the dataset folder. The split is the CSV a row is in: `train.csv` → train,
//! `valid.csv` → validate, the test CSV → test. Label cells 1.0, 0.0, -1.0
//! (uncertain) and blank become 1, 0, -1 and null in the label columns, as for
//! MIMIC's CheXpert labels. The view is `AP/PA` where given, else
//! `Frontal/Lateral` (so lateral rows read `Lateral`), else the file name's
//! `frontal`/`lateral`.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use indicatif::ProgressBar;
use schemas::{CHEXPERT_CLASSES, Manifest, Reject, Source, Stage};
use serde::Serialize;

use crate::csvio::{self, CsvError, Table};
use crate::mimic::view_kept;
use crate::prepare;
use crate::shard::{self, Outcome, Planned, Row, RunInfo, ShardError, ShardOptions};

/// Dataset folder names, the full-resolution release first.
pub const DATASET_DIRS: [&str; 2] = ["CheXpert-v1.0", "CheXpert-v1.0-small"];

/// Label CSVs with the split of their rows; of the test names the first
/// present is read.
const CSVS: [(&[&str], &str); 3] = [
    (&["train.csv"], "train"),
    (&["valid.csv"], "validate"),
    (&["test.csv", "test_labels.csv"], "test"),
];

/// Everything a CheXpert run needs.
#[derive(Debug, Clone, Serialize)]
pub struct ChexpertOptions {
    /// The folder above the dataset folder, or the dataset folder itself.
    pub root: PathBuf,
    /// Label CSVs to read instead of the ones found in the dataset folder
    /// (e.g. a test labels file kept elsewhere); each one's split from its
    /// name (`train*`, `valid*`/`val*`, `test*`). Empty: the ones found.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub csvs: Vec<PathBuf>,
    /// Views kept (`AP`, `PA`, `Lateral`, ...); empty keeps all.
    pub views: Vec<String>,
    /// Image policy.
    pub image: schemas::ImagePolicy,
    /// Shard sizes and strictness.
    pub shards: ShardOptions,
    /// A CSV that ends early (truncated gzip) is recorded as one reject at
    /// its break instead of stopping the run. Recorded only when set.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_truncated_csv: bool,
}

/// Why a CheXpert run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum ChexpertError {
    /// The folder is not laid out as a CheXpert release.
    #[error("{}: not a CheXpert release: {reason}", root.display())]
    Layout {
        /// The folder given.
        root: PathBuf,
        /// What was looked for and not found.
        reason: String,
    },
    /// A label CSV is unusable.
    #[error(transparent)]
    Csv(#[from] CsvError),
    /// Writing shards failed.
    #[error(transparent)]
    Shard(#[from] ShardError),
}

/// Parses a label cell: `1.0`, `0.0`, `-1.0` (or `1`, `0`, `-1`) or blank.
pub fn parse_label(cell: &str) -> Result<Option<i8>, String> {
    match cell {
        "" => Ok(None),
        _ => match cell.parse::<f32>() {
            Ok(1.0) => Ok(Some(1)),
            Ok(0.0) => Ok(Some(0)),
            Ok(-1.0) => Ok(Some(-1)),
            _ => Err(format!(
                "label value {cell:?} is not 1.0, 0.0, -1.0 or blank"
            )),
        },
    }
}

/// The dataset folder and its label CSVs with their splits.
#[derive(Debug)]
struct Layout {
    dataset: PathBuf,
    csvs: Vec<(PathBuf, &'static str)>,
}

/// The split of a label CSV named by the user, from its file name.
fn split_of_csv(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    if name.starts_with("train") {
        Some("train")
    } else if name.starts_with("val") {
        Some("validate")
    } else if name.starts_with("test") {
        Some("test")
    } else {
        None
    }
}

fn find_layout(root: &Path, given: &[PathBuf]) -> Result<Layout, ChexpertError> {
    let err = |reason: String| ChexpertError::Layout {
        root: root.to_path_buf(),
        reason,
    };
    let is_dataset = root
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| DATASET_DIRS.contains(&n));
    let dataset = if is_dataset {
        root.to_path_buf()
    } else {
        let found: Vec<PathBuf> = DATASET_DIRS
            .iter()
            .map(|d| root.join(d))
            .filter(|d| d.is_dir())
            .collect();
        match found.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(err(format!(
                    "looked for a {} or {} folder in it",
                    DATASET_DIRS[0], DATASET_DIRS[1]
                )));
            }
            _ => {
                return Err(err(format!(
                    "it holds both {} and {}; give one of them as --root",
                    DATASET_DIRS[0], DATASET_DIRS[1]
                )));
            }
        }
    };
    if !given.is_empty() {
        let mut csvs = Vec::new();
        for p in given {
            if !p.is_file() {
                return Err(err(format!("--csv {}: no such file", p.display())));
            }
            let Some(split) = split_of_csv(p) else {
                return Err(err(format!(
                    "--csv {}: the name must start with train, valid or test (it gives the split)",
                    p.display()
                )));
            };
            csvs.push((p.clone(), split));
        }
        return Ok(Layout { dataset, csvs });
    }
    let csvs: Vec<(PathBuf, &str)> = CSVS
        .iter()
        .filter_map(|(names, split)| {
            names
                .iter()
                .map(|n| dataset.join(n))
                .find(|p| p.is_file())
                .map(|p| (p, *split))
        })
        .collect();
    if csvs.is_empty() {
        return Err(err(format!(
            "{}: no label CSV: looked for train.csv, valid.csv, test.csv and test_labels.csv",
            dataset.display()
        )));
    }
    Ok(Layout { dataset, csvs })
}

#[derive(Debug, Clone)]
struct Item {
    image_path: PathBuf,
    patient: String,
    study: String,
    image_id: String,
    view: String,
    split: &'static str,
    labels: [Option<i8>; 14],
}

/// Resolves a `Path` cell to the image and its (patient, study, image) ids,
/// or says why it cannot.
fn resolve(dataset: &Path, cell: &str) -> Result<(PathBuf, [String; 3]), String> {
    let rel = Path::new(cell);
    let parts: Vec<&str> = rel
        .components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str().ok_or(()),
            _ => Err(()),
        })
        .collect::<Result<_, _>>()
        .map_err(|()| format!("Path {cell:?} is not a plain relative path"))?;
    let name = dataset.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let path = match parts.first() {
        Some(first) if *first == name => dataset.parent().unwrap_or(dataset).join(rel),
        _ => dataset.join(rel),
    };
    let [patient, study, file] = match parts.as_slice() {
        [.., p, s, f] => [p, s, f],
        _ => return Err(format!("Path {cell:?} is not …/patient/study/image")),
    };
    let stem = Path::new(file)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(file);
    let ids = [
        patient.to_string(),
        format!("{patient}_{study}"),
        format!("{patient}_{study}_{stem}"),
    ];
    Ok((path, ids))
}

/// Lists the rows of every label CSV, ordered by (patient, study, image).
fn plan(layout: &Layout, allow_truncated: bool) -> Result<Planned<Item>, ChexpertError> {
    let mut plan = Planned {
        items: Vec::new(),
        rejects: Vec::new(),
        seen: 0,
    };
    let mut first: HashMap<String, String> = HashMap::new();
    for (csv_path, split) in &layout.csvs {
        let mut table = Table::open(csv_path)?;
        let path_col = table.column("Path")?;
        let label_cols = CHEXPERT_CLASSES
            .iter()
            .map(|(name, _)| table.column(name))
            .collect::<Result<Vec<_>, _>>()?;
        // The test labels carry no view columns; the file name then tells.
        let ap_pa = table.column("AP/PA").ok();
        let frontal = table.column("Frontal/Lateral").ok();
        let reject = |line: u64, ids: Option<&[String; 3]>, reason: String| Reject {
            path: format!("{}:{line}", csv_path.display()),
            subject_id: ids.map(|i| i[0].clone()),
            study_id: ids.map(|i| i[1].clone()),
            image_id: ids.map(|i| i[2].clone()),
            stage: Stage::Csv,
            reason,
        };
        let truncated = csvio::read_all(&mut table, allow_truncated, |row| {
            plan.seen += 1;
            let row = match row {
                Ok(r) => r,
                Err(bad) => {
                    plan.rejects
                        .push(reject(bad.line, None, bad.reason.clone()));
                    return;
                }
            };
            let (path, ids) = match resolve(&layout.dataset, row.get(path_col)) {
                Ok(r) => r,
                Err(e) => {
                    plan.rejects.push(reject(row.line, None, e));
                    return;
                }
            };
            let at = format!("{}:{}", csv_path.display(), row.line);
            if let Some(was) = first.get(&ids[2]) {
                let reason = format!("{} is listed again (first at {was})", row.get(path_col));
                plan.rejects.push(reject(row.line, Some(&ids), reason));
                return;
            }
            let mut labels = [None; 14];
            for (k, (slot, col)) in labels.iter_mut().zip(&label_cols).enumerate() {
                match parse_label(row.get(*col)) {
                    Ok(v) => *slot = v,
                    Err(e) => {
                        let class = CHEXPERT_CLASSES[k].0;
                        plan.rejects
                            .push(reject(row.line, Some(&ids), format!("{class}: {e}")));
                        return;
                    }
                }
            }
            first.insert(ids[2].clone(), at);
            let cell = |c: Option<usize>| c.map(|c| row.get(c)).unwrap_or("");
            let stem = ids[2].to_ascii_lowercase();
            let view = if !cell(ap_pa).is_empty() {
                cell(ap_pa).to_string()
            } else if !cell(frontal).is_empty() {
                cell(frontal).to_string()
            } else if stem.ends_with("lateral") {
                "Lateral".into()
            } else if stem.ends_with("frontal") {
                "Frontal".into()
            } else {
                String::new()
            };
            let [patient, study, image_id] = ids;
            plan.items.push(Item {
                image_path: path,
                patient,
                study,
                image_id,
                view,
                split,
                labels,
            });
        })?;
        if let Some(t) = truncated {
            plan.seen += 1;
            let reason = format!("{t}; the rows after it are unknown");
            plan.rejects.push(reject(t.line, None, reason));
        }
    }
    plan.items.sort_by(|a, b| {
        (&a.patient, &a.study, &a.image_id).cmp(&(&b.patient, &b.study, &b.image_id))
    });
    Ok(plan)
}

/// Runs `ingest chexpert`.
pub fn run(
    opts: &ChexpertOptions,
    out: &Path,
    progress: &ProgressBar,
) -> Result<Manifest, ChexpertError> {
    let layout = find_layout(&opts.root, &opts.csvs)?;
    let planned = plan(&layout, opts.allow_truncated_csv)?;
    let info = RunInfo {
        source: Source::Chexpert,
        arguments: serde_json::to_value(opts).expect("serialisable"),
        image_policy: opts.image.clone(),
        tokenizer: None,
        entities: None,
        inputs: layout
            .csvs
            .iter()
            .map(|(p, _)| p.clone())
            .chain(planned.items.iter().map(|it| it.image_path.clone()))
            .collect(),
    };
    let process = |it: &Item| -> Outcome {
        if !view_kept(&opts.views, &it.view) {
            return Outcome::Filtered;
        }
        prepare::image_row(
            &it.image_path,
            prepare::png_or_jpeg(&it.image_path, &opts.image),
            Row {
                source: Source::Chexpert.name().into(),
                subject_id: it.patient.clone(),
                study_id: it.study.clone(),
                image_id: it.image_id.clone(),
                split: it.split.into(),
                view: it.view.clone(),
                paired: false,
                labels: it.labels,
                ..Default::default()
            },
        )
    };
    Ok(shard::run(
        out,
        &opts.shards,
        info,
        planned,
        process,
        progress,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_cells_follow_the_chexpert_convention() {
        assert_eq!(parse_label("1.0"), Ok(Some(1)));
        assert_eq!(parse_label("0"), Ok(Some(0)));
        assert_eq!(parse_label("-1.0"), Ok(Some(-1)));
        assert_eq!(parse_label(""), Ok(None));
        assert!(parse_label("2.0").is_err());
        assert!(parse_label("yes").is_err());
    }

    #[test]
    fn paths_resolve_against_the_folder_above_or_the_dataset_folder() {
        let ds = Path::new("/r/CheXpert-v1.0-small");
        let (p, ids) = resolve(
            ds,
            "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
        )
        .unwrap();
        assert_eq!(
            p,
            Path::new("/r/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
        );
        assert_eq!(
            ids,
            [
                "patient00001",
                "patient00001_study1",
                "patient00001_study1_view1_frontal"
            ]
        );
        let (p, _) = resolve(ds, "test/patient64741/study1/view1_frontal.jpg").unwrap();
        assert_eq!(
            p,
            Path::new("/r/CheXpert-v1.0-small/test/patient64741/study1/view1_frontal.jpg")
        );
        assert!(resolve(ds, "../etc/passwd/x/y").is_err());
        assert!(resolve(ds, "/abs/p/s/v.jpg").is_err());
        assert!(resolve(ds, "view1.jpg").is_err());
    }

    #[test]
    fn an_unrecognised_layout_names_what_was_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_layout(dir.path(), &[]).unwrap_err().to_string();
        assert!(err.contains("CheXpert-v1.0-small"), "{err}");
        std::fs::create_dir(dir.path().join("CheXpert-v1.0")).unwrap();
        let err = find_layout(dir.path(), &[]).unwrap_err().to_string();
        assert!(err.contains("valid.csv"), "{err}");
        std::fs::write(dir.path().join("CheXpert-v1.0/valid.csv"), "Path\n").unwrap();
        let l = find_layout(dir.path(), &[]).unwrap();
        assert_eq!(l.csvs.len(), 1);
        assert_eq!(l.csvs[0].1, "validate");
        std::fs::create_dir(dir.path().join("CheXpert-v1.0-small")).unwrap();
        let err = find_layout(dir.path(), &[]).unwrap_err().to_string();
        assert!(err.contains("both"), "{err}");
        // A labels file elsewhere, named by the user; its name gives the split.
        let ds = dir.path().join("CheXpert-v1.0");
        let labels = dir.path().join("test_labels.csv");
        std::fs::write(&labels, "Path\n").unwrap();
        let l = find_layout(&ds, std::slice::from_ref(&labels)).unwrap();
        assert_eq!(l.csvs, [(labels, "test")]);
        let odd = dir.path().join("labels.csv");
        std::fs::write(&odd, "Path\n").unwrap();
        let err = find_layout(&ds, &[odd]).unwrap_err().to_string();
        assert!(err.contains("train, valid or test"), "{err}");
    }
}
