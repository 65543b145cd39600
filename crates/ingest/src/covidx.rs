//! COVIDx CXR as released: image-only rows, its label in `finding_labels`.
//!
//! A release is a folder with one label file per split and one image folder
//! per split:
//!
//! ```text
//! root/
//!   train.txt  val.txt  test.txt      (or train_COVIDx9A.txt, test_COVIDx9A.txt, ...)
//!   train/  val/  test/               the images, PNG or JPEG
//! ```
//!
//! Each line of a label file is `patient_id filename label source`, separated
//! by whitespace (older releases leave out `source`). The split of a row is the
//! file it is listed in: `train` → `train`, `val` → `validate`, `test` → `test`.
//!
//! Labels are mapped to one `finding_labels` vocabulary across releases:
//! `positive` and `COVID-19` → `["COVID-19"]`, `pneumonia` → `["pneumonia"]`,
//! `negative` and `normal` → `[]` (an empty list is a negative row, as for
//! the other releases).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use schemas::{COVID19, Manifest, PNEUMONIA, Reject, Source, Stage};
use serde::Serialize;

use crate::prepare;
use crate::shard::{self, Outcome, Planned, Row, RunInfo, ShardError, ShardOptions};

/// The release's split names (file stem and image folder) with the shard's
/// split value.
pub const SPLITS: [(&str, &str); 3] = [("train", "train"), ("val", "validate"), ("test", "test")];

/// Everything a COVIDx run needs.
#[derive(Debug, Clone, Serialize)]
pub struct CovidxOptions {
    /// Folder holding the label files and the split image folders.
    pub root: PathBuf,
    /// Image policy (`png_window` applies to 16-bit PNGs only).
    pub image: schemas::ImagePolicy,
    /// Shard sizes and strictness.
    pub shards: ShardOptions,
}

/// Why a COVIDx run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum CovidxError {
    /// The folder is not laid out as a COVIDx release.
    #[error("{}: not a COVIDx release: {reason}", root.display())]
    Layout {
        /// The folder given.
        root: PathBuf,
        /// What was looked for and not found (or found twice).
        reason: String,
    },
    /// A label file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing shards failed.
    #[error(transparent)]
    Shard(#[from] ShardError),
}

/// The `finding_labels` of a COVIDx label, or `None` for a label no release uses.
pub fn finding_labels(label: &str) -> Option<Vec<String>> {
    let l = label.to_ascii_lowercase();
    match l.as_str() {
        "positive" | "covid-19" | "covid19" => Some(vec![COVID19.into()]),
        "pneumonia" => Some(vec![PNEUMONIA.into()]),
        "negative" | "normal" => Some(Vec::new()),
        _ => None,
    }
}

/// One label file found for a split.
#[derive(Debug, Clone)]
struct SplitFile {
    /// The label file.
    labels: PathBuf,
    /// Its image folder.
    images: PathBuf,
    /// The shard's split value.
    split: &'static str,
}

/// Finds the label file of each split: `<split>.txt`, else exactly one
/// versioned `<split>_*.txt`. At least one split must be present.
fn find_split_files(root: &Path) -> Result<Vec<SplitFile>, CovidxError> {
    let layout = |reason: String| CovidxError::Layout {
        root: root.to_path_buf(),
        reason,
    };
    let entries = std::fs::read_dir(root).map_err(|e| layout(format!("cannot list it: {e}")))?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    let mut found = Vec::new();
    for (stem, split) in SPLITS {
        let exact = format!("{stem}.txt");
        let name = if names.contains(&exact) {
            exact
        } else {
            let versioned: Vec<&String> = names
                .iter()
                .filter(|n| n.starts_with(&format!("{stem}_")) && n.ends_with(".txt"))
                .collect();
            match versioned.as_slice() {
                [] => continue,
                [one] => (*one).clone(),
                many => {
                    return Err(layout(format!(
                        "several label files for split {stem}: {}; keep one",
                        many.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        };
        let images = root.join(stem);
        if !images.is_dir() {
            return Err(layout(format!(
                "{name} is there but its image folder {stem}/ is not"
            )));
        }
        found.push(SplitFile {
            labels: root.join(name),
            images,
            split,
        });
    }
    if found.is_empty() {
        return Err(layout(
            "no label file: looked for train.txt, val.txt, test.txt and versioned \
             train_*.txt, val_*.txt, test_*.txt (with train/, val/, test/ image folders)"
                .into(),
        ));
    }
    Ok(found)
}

#[derive(Debug, Clone)]
struct Item {
    image_id: String,
    image_path: PathBuf,
    patient: String,
    split: &'static str,
    labels: Vec<String>,
}

/// Parses the label files into rows ordered by (patient, image). A malformed
/// line or an image listed twice is a reject naming the file and line.
fn plan(files: &[SplitFile]) -> Result<Planned<Item>, CovidxError> {
    let mut plan = Planned {
        items: Vec::new(),
        rejects: Vec::new(),
        seen: 0,
    };
    // (split folder, filename) → where first listed.
    let mut listed: HashMap<(PathBuf, String), String> = HashMap::new();
    for f in files {
        let bytes = std::fs::read(&f.labels).map_err(|source| CovidxError::Read {
            path: f.labels.clone(),
            source,
        })?;
        for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
            let line_no = i + 1;
            let at = format!("{}:{line_no}", f.labels.display());
            let text = String::from_utf8_lossy(raw);
            if text.trim().is_empty() {
                continue;
            }
            plan.seen += 1;
            let fields: Vec<&str> = text.split_whitespace().collect();
            let reject = |reason: String| Reject {
                path: at.clone(),
                subject_id: fields.first().map(|s| s.to_string()),
                study_id: None,
                image_id: fields.get(1).map(|s| s.to_string()),
                stage: Stage::Csv,
                reason,
            };
            if std::str::from_utf8(raw).is_err() {
                plan.rejects
                    .push(reject("the line is not valid UTF-8".into()));
                continue;
            }
            if !(3..=4).contains(&fields.len()) {
                plan.rejects.push(reject(format!(
                    "{} fields; a line is `patient_id filename label [source]`",
                    fields.len()
                )));
                continue;
            }
            let (patient, file, label) = (fields[0], fields[1], fields[2]);
            // The file name is joined to the split folder: nothing may climb out.
            if file.contains(['/', '\\']) || file == ".." || file == "." {
                plan.rejects
                    .push(reject(format!("file name {file:?} is not a plain name")));
                continue;
            }
            let Some(labels) = finding_labels(label) else {
                plan.rejects.push(reject(format!(
                    "unknown label {label:?}; expected positive, negative, COVID-19, pneumonia or normal"
                )));
                continue;
            };
            let key = (f.images.clone(), file.to_string());
            if let Some(first) = listed.get(&key) {
                plan.rejects
                    .push(reject(format!("{file} is listed again (first at {first})")));
                continue;
            }
            listed.insert(key, at.clone());
            plan.items.push(Item {
                image_id: file.to_string(),
                image_path: f.images.join(file),
                patient: patient.to_string(),
                split: f.split,
                labels,
            });
        }
    }
    // The split is the release's, kept as it is; a patient listed in two
    // split files would leak between them, so it is said out loud.
    let mut splits_of: HashMap<&str, Vec<&str>> = HashMap::new();
    for it in &plan.items {
        let s = splits_of.entry(&it.patient).or_default();
        if !s.contains(&it.split) {
            s.push(it.split);
        }
    }
    let mut leaking: Vec<&str> = splits_of
        .iter()
        .filter(|(_, s)| s.len() > 1)
        .map(|(p, _)| *p)
        .collect();
    if !leaking.is_empty() {
        leaking.sort();
        tracing::warn!(
            "{} patients are listed in more than one split file (e.g. {}); their images stay in the splits the release gives",
            leaking.len(),
            leaking[0]
        );
    }
    // A file name may recur across splits (different folders): the split
    // breaks the tie so that the order is total.
    plan.items.sort_by(|a, b| {
        (&a.patient, &a.image_id, a.split).cmp(&(&b.patient, &b.image_id, b.split))
    });
    Ok(plan)
}

/// Runs `ingest covidx`.
pub fn run(
    opts: &CovidxOptions,
    out: &Path,
    progress: &ProgressBar,
) -> Result<Manifest, CovidxError> {
    let files = find_split_files(&opts.root)?;
    let planned = plan(&files)?;
    let info = RunInfo {
        source: Source::Covidx,
        arguments: serde_json::to_value(opts).expect("serialisable"),
        image_policy: opts.image.clone(),
        tokenizer: None,
        entities: None,
        inputs: files
            .iter()
            .map(|f| f.labels.clone())
            .chain(planned.items.iter().map(|it| it.image_path.clone()))
            .collect(),
    };
    let process = |it: &Item| -> Outcome {
        prepare::image_row(
            &it.image_path,
            prepare::png_or_jpeg(&it.image_path, &opts.image),
            Row {
                source: Source::Covidx.name().into(),
                subject_id: it.patient.clone(),
                // COVIDx has no studies: each image is its own.
                study_id: it.image_id.clone(),
                image_id: it.image_id.clone(),
                split: it.split.into(),
                view: String::new(),
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

    fn tree(files: &[(&str, &str)], dirs: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        for d in dirs {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        dir
    }

    #[test]
    fn labels_map_old_and_new_vocabularies_onto_one() {
        assert_eq!(finding_labels("positive").unwrap(), ["COVID-19"]);
        assert_eq!(finding_labels("COVID-19").unwrap(), ["COVID-19"]);
        assert_eq!(finding_labels("pneumonia").unwrap(), ["pneumonia"]);
        assert!(finding_labels("negative").unwrap().is_empty());
        assert!(finding_labels("normal").unwrap().is_empty());
        assert!(finding_labels("covid").is_none());
    }

    #[test]
    fn split_files_plain_or_versioned_and_unrecognised_layouts_name_what_was_looked_for() {
        let t = tree(
            &[("train_COVIDx9A.txt", ""), ("test.txt", "")],
            &["train", "test"],
        );
        let found = find_split_files(t.path()).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|f| (f.labels.file_name().unwrap().to_str().unwrap(), f.split))
            .collect();
        assert_eq!(
            names,
            [("train_COVIDx9A.txt", "train"), ("test.txt", "test")]
        );

        let empty = tree(&[("readme.md", "")], &[]);
        let err = find_split_files(empty.path()).unwrap_err().to_string();
        assert!(
            err.contains("train.txt") && err.contains("test_*.txt"),
            "{err}"
        );
        let two = tree(
            &[("train_COVIDx8.txt", ""), ("train_COVIDx9A.txt", "")],
            &["train"],
        );
        let err = find_split_files(two.path()).unwrap_err().to_string();
        assert!(err.contains("several label files"), "{err}");
        let no_images = tree(&[("val.txt", "")], &[]);
        let err = find_split_files(no_images.path()).unwrap_err().to_string();
        assert!(err.contains("val/"), "{err}");
    }

    #[test]
    fn malformed_lines_are_rejects_with_file_and_line() {
        let t = tree(
            &[(
                "train.txt",
                "p1 a.png positive cohen\n\n  p2\t b.jpg   negative  rsna \np3 c.png\np4 d.png maybe x\np5 ../e.png normal\np1 a.png positive cohen\np6 f.png COVID-19\n",
            )],
            &["train"],
        );
        let files = find_split_files(t.path()).unwrap();
        let p = plan(&files).unwrap();
        assert_eq!(p.seen, 7);
        let ids: Vec<_> = p.items.iter().map(|i| i.image_id.as_str()).collect();
        assert_eq!(ids, ["a.png", "b.jpg", "f.png"]);
        assert_eq!(p.items[1].patient, "p2");
        let reasons: Vec<_> = p
            .rejects
            .iter()
            .map(|r| (r.path.rsplit(':').next().unwrap(), r.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons[0].0 == "4" && reasons[0].1.contains("2 fields"));
        assert!(reasons[1].0 == "5" && reasons[1].1.contains("unknown label"));
        assert!(reasons[2].0 == "6" && reasons[2].1.contains("plain name"));
        assert!(reasons[3].0 == "7" && reasons[3].1.contains("listed again"));
    }
}
