//! NIH ChestX-ray14 as released: image-only rows, its 14 classes in
//! `finding_labels`.
//!
//! ```text
//! root/
//!   Data_Entry_2017_v2020.csv  (or Data_Entry_2017.csv, with a trailing empty column)
//!   train_val_list.txt  test_list.txt
//!   images/  or  images_001/images/ … images_012/images/   8-bit PNGs
//! ```
//!
//! `Finding Labels` is pipe-separated (`Effusion|Mass`); `No Finding` is the
//! empty list. The split is per patient, so that no patient is in two splits:
//! - `official`: the images of `test_list.txt` are test; the patients of
//!   `train_val_list.txt` are split into train and validate by a hash of the
//!   patient id and the seed.
//! - `paper`: every patient by a hash of the patient id and the seed, 70 % train,
//!   10 % validate, 20 % test.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use schemas::{Manifest, NIH_CLASSES, Reject, Source, Stage};
use serde::Serialize;

use crate::csvio::{self, CsvError, Table};
use crate::mimic::view_kept;
use crate::padchest::patient_split;
use crate::prepare;
use crate::shard::{self, Outcome, Planned, Row, RunInfo, ShardError, ShardOptions};

/// The label of an image without findings.
pub const NO_FINDING: &str = "No Finding";

/// The index CSV's stems, the newer first.
pub const DATA_ENTRY_STEMS: [&str; 2] = ["Data_Entry_2017_v2020", "Data_Entry_2017"];

/// The official list of test images.
pub const TEST_LIST: &str = "test_list.txt";
/// The official list of train and validation images.
pub const TRAIN_VAL_LIST: &str = "train_val_list.txt";

/// How rows are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum NihSplit {
    /// The release's test list; validation carved from train_val by patient.
    Official,
    /// Patient-level 70/10/20 from the seed.
    Paper,
}

/// Everything a ChestX-ray14 run needs.
#[derive(Debug, Clone, Serialize)]
pub struct NihOptions {
    /// Folder holding the CSV, the lists and the image folders.
    pub root: PathBuf,
    /// Views kept (`View Position`); empty keeps all.
    pub views: Vec<String>,
    /// How the split is made.
    pub split: NihSplit,
    /// Share of train_val patients in validate (`official`).
    pub validate_fraction: f64,
    /// Seed of the patient-level split.
    pub seed: u64,
    /// Image policy.
    pub image: schemas::ImagePolicy,
    /// Shard sizes and strictness.
    pub shards: ShardOptions,
    /// A CSV that ends early (truncated gzip) is recorded as one reject at
    /// its break instead of stopping the run. Recorded only when set.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_truncated_csv: bool,
}

/// Why a ChestX-ray14 run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum NihError {
    /// The folder is not laid out as a ChestX-ray14 release.
    #[error("{}: not a ChestX-ray14 release: {reason}", root.display())]
    Layout {
        /// The folder given.
        root: PathBuf,
        /// What was looked for and not found.
        reason: String,
    },
    /// A split list could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The index CSV is unusable.
    #[error(transparent)]
    Csv(#[from] CsvError),
    /// Writing shards failed.
    #[error(transparent)]
    Shard(#[from] ShardError),
}

/// Parses `Finding Labels`: the pipe-separated classes, `No Finding` as the
/// empty list. Unknown classes, an empty cell and `No Finding` beside a class
/// are errors.
pub fn parse_findings(cell: &str) -> Result<Vec<String>, String> {
    let cell = cell.trim();
    if cell == NO_FINDING {
        return Ok(Vec::new());
    }
    if cell.is_empty() {
        return Err("empty Finding Labels".into());
    }
    let mut labels: Vec<String> = Vec::new();
    for part in cell.split('|').map(str::trim) {
        if !NIH_CLASSES.contains(&part) {
            return Err(if part == NO_FINDING {
                format!("Finding Labels {cell:?} has No Finding beside findings")
            } else {
                format!("Finding Labels {cell:?}: {part:?} is not one of the 14 classes")
            });
        }
        if !labels.iter().any(|l| l == part) {
            labels.push(part.to_string());
        }
    }
    Ok(labels)
}

/// The image folders of the release: `images/` or `images_NNN/images/`.
fn image_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if root.join("images").is_dir() {
        dirs.push(root.join("images"));
    }
    for n in 1..=12 {
        let d = root.join(format!("images_{n:03}")).join("images");
        if d.is_dir() {
            dirs.push(d);
        }
    }
    dirs
}

/// Every file name in the image folders with its path; the first folder
/// holding a name wins.
fn index_images(dirs: &[PathBuf]) -> Result<HashMap<String, PathBuf>, NihError> {
    let mut index = HashMap::new();
    for d in dirs {
        let entries = std::fs::read_dir(d).map_err(|source| NihError::Read {
            path: d.clone(),
            source,
        })?;
        let mut names: Vec<_> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for n in names {
            index.entry(n.clone()).or_insert_with(|| d.join(n));
        }
    }
    Ok(index)
}

/// The image names of a split list, one per line.
fn read_list(path: &Path) -> Result<HashSet<String>, NihError> {
    let text = std::fs::read(path).map_err(|source| NihError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

#[derive(Debug, Clone)]
struct Item {
    image_id: String,
    /// `None` when no image folder holds the file.
    image_path: Option<PathBuf>,
    patient: String,
    view: String,
    split: &'static str,
    labels: Vec<String>,
}

/// Finds the CSV and image folders, or says what was looked for.
fn layout(root: &Path) -> Result<(PathBuf, Vec<PathBuf>), NihError> {
    let err = |reason: String| NihError::Layout {
        root: root.to_path_buf(),
        reason,
    };
    let csv = DATA_ENTRY_STEMS
        .iter()
        .find_map(|stem| csvio::find(root, stem).ok())
        .ok_or_else(|| {
            err(
                "no index CSV: looked for Data_Entry_2017_v2020.csv and Data_Entry_2017.csv \
                 (or .csv.gz)"
                    .into(),
            )
        })?;
    let dirs = image_dirs(root);
    if dirs.is_empty() {
        return Err(err(
            "no image folder: looked for images/ and images_001/images/ … images_012/images/"
                .into(),
        ));
    }
    Ok((csv, dirs))
}

/// Lists the rows to write, ordered by (patient, image), with their split.
fn plan(opts: &NihOptions, csv_path: &Path, dirs: &[PathBuf]) -> Result<Planned<Item>, NihError> {
    let root = &opts.root;
    let official = match opts.split {
        NihSplit::Official => {
            let [test, train_val] = [TEST_LIST, TRAIN_VAL_LIST].map(|n| root.join(n));
            for p in [&test, &train_val] {
                if !p.is_file() {
                    return Err(NihError::Layout {
                        root: root.clone(),
                        reason: format!(
                            "--split official needs {TEST_LIST} and {TRAIN_VAL_LIST}; {} is missing",
                            p.display()
                        ),
                    });
                }
            }
            Some((read_list(&test)?, read_list(&train_val)?))
        }
        NihSplit::Paper => None,
    };
    let images = index_images(dirs)?;
    let mut table = Table::open(csv_path)?;
    let (image, findings, patient, view) = (
        table.column("Image Index")?,
        table.column("Finding Labels")?,
        table.column("Patient ID")?,
        table.column("View Position")?,
    );
    let mut plan = Planned {
        items: Vec::new(),
        rejects: Vec::new(),
        seen: 0,
    };
    let reject = |line: u64, patient: &str, image: &str, reason: String| Reject {
        path: format!("{}:{line}", csv_path.display()),
        subject_id: (!patient.is_empty()).then(|| patient.to_string()),
        study_id: None,
        image_id: (!image.is_empty()).then(|| image.to_string()),
        stage: Stage::Csv,
        reason,
    };
    let mut first_line: HashMap<String, u64> = HashMap::new();
    let truncated = csvio::read_all(&mut table, opts.allow_truncated_csv, |row| {
        plan.seen += 1;
        let row = match row {
            Ok(r) => r,
            Err(bad) => {
                let r = reject(
                    bad.line,
                    bad.get(patient),
                    bad.get(image),
                    bad.reason.clone(),
                );
                plan.rejects.push(r);
                return;
            }
        };
        let (id, pat) = (row.get(image), row.get(patient));
        let bad = |reason: String| reject(row.line, pat, id, reason);
        if id.is_empty() || pat.is_empty() || id.contains(['/', '\\']) {
            plan.rejects.push(bad(format!(
                "missing or malformed Image Index {id:?} / Patient ID {pat:?}"
            )));
            return;
        }
        if let Some(first) = first_line.get(id) {
            plan.rejects
                .push(bad(format!("{id} is listed again (first at line {first})")));
            return;
        }
        first_line.insert(id.to_string(), row.line);
        let labels = match parse_findings(row.get(findings)) {
            Ok(l) => l,
            Err(e) => {
                plan.rejects.push(bad(e));
                return;
            }
        };
        let split = match &official {
            Some((test, train_val)) => {
                if test.contains(id) {
                    "test"
                } else if train_val.contains(id) {
                    // Validation is carved by patient: the patient's images
                    // of train_val all land on the same side.
                    let f = (1.0 - opts.validate_fraction, opts.validate_fraction);
                    patient_split(pat, opts.seed, f)
                } else {
                    plan.rejects.push(bad(format!(
                        "{id} is in neither {TEST_LIST} nor {TRAIN_VAL_LIST}"
                    )));
                    return;
                }
            }
            None => patient_split(pat, opts.seed, (0.7, 0.1)),
        };
        plan.items.push(Item {
            image_id: id.to_string(),
            image_path: images.get(id).cloned(),
            patient: pat.to_string(),
            view: row.get(view).to_string(),
            split,
            labels,
        });
    })?;
    if let Some(t) = truncated {
        plan.seen += 1;
        let reason = format!("{t}; the rows after it are unknown");
        plan.rejects.push(reject(t.line, "", "", reason));
    }
    plan.items
        .sort_by(|a, b| (&a.patient, &a.image_id).cmp(&(&b.patient, &b.image_id)));
    Ok(plan)
}

/// Runs `ingest nih`.
pub fn run(opts: &NihOptions, out: &Path, progress: &ProgressBar) -> Result<Manifest, NihError> {
    let (csv_path, dirs) = layout(&opts.root)?;
    let planned = plan(opts, &csv_path, &dirs)?;
    let mut inputs = vec![csv_path];
    if opts.split == NihSplit::Official {
        inputs.extend([TEST_LIST, TRAIN_VAL_LIST].map(|n| opts.root.join(n)));
    }
    inputs.extend(planned.items.iter().filter_map(|it| it.image_path.clone()));
    let info = RunInfo {
        source: Source::Nih,
        arguments: serde_json::to_value(opts).expect("serialisable"),
        image_policy: opts.image.clone(),
        tokenizer: None,
        entities: None,
        inputs,
    };
    let process = |it: &Item| -> Outcome {
        if !view_kept(&opts.views, &it.view) {
            return Outcome::Filtered;
        }
        // `00000001_000.png`: patient and follow-up number, one image each.
        let study = it.image_id.trim_end_matches(".png").to_string();
        let Some(path) = &it.image_path else {
            return Outcome::Rejected(Box::new(Reject {
                path: it.image_id.clone(),
                subject_id: Some(it.patient.clone()),
                study_id: Some(study),
                image_id: Some(it.image_id.clone()),
                stage: Stage::ImageRead,
                reason: "image not found under images/ or images_001/images/ … images_012/images/"
                    .into(),
            }));
        };
        prepare::image_row(
            path,
            prepare::png_or_jpeg(path, &opts.image),
            Row {
                source: Source::Nih.name().into(),
                subject_id: it.patient.clone(),
                study_id: study,
                image_id: it.image_id.clone(),
                split: it.split.into(),
                view: it.view.clone(),
                paired: false,
                finding_labels: it.labels.clone(),
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
    fn finding_labels_are_whole_classes_and_no_finding_is_empty() {
        assert!(parse_findings("No Finding").unwrap().is_empty());
        assert_eq!(
            parse_findings("Effusion|Pleural_Thickening|Effusion").unwrap(),
            ["Effusion", "Pleural_Thickening"]
        );
        assert!(
            parse_findings("Effusion|Covid")
                .unwrap_err()
                .contains("\"Covid\"")
        );
        assert!(
            parse_findings("No Finding|Mass")
                .unwrap_err()
                .contains("beside")
        );
        assert!(parse_findings("").is_err());
    }

    #[test]
    fn an_unrecognised_layout_names_what_was_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let err = layout(dir.path()).unwrap_err().to_string();
        assert!(err.contains("Data_Entry_2017_v2020.csv"), "{err}");
        std::fs::write(dir.path().join("Data_Entry_2017.csv"), "a\n").unwrap();
        let err = layout(dir.path()).unwrap_err().to_string();
        assert!(err.contains("images_001/images/"), "{err}");
        std::fs::create_dir_all(dir.path().join("images_002/images")).unwrap();
        let (csv, dirs) = layout(dir.path()).unwrap();
        assert!(csv.ends_with("Data_Entry_2017.csv"));
        assert_eq!(dirs, [dir.path().join("images_002/images")]);
    }
}
