//! MIMIC-CXR and MIMIC-CXR-JPG as released: plan the rows, then turn each
//! into a shard row or a reject.
//!
//! The release is read as it lies on disk:
//! `files/pXX/pSUBJECT/sSTUDY/<dicom_id>.dcm|.jpg`, the report
//! `files/pXX/pSUBJECT/sSTUDY.txt`, and the index CSVs
//! `mimic-cxr-2.0.0-{metadata,split,chexpert,negbio}.csv[.gz]`. One row per
//! image listed in the metadata CSV; rows are ordered by (subject, study,
//! image) so that the shards do not depend on the order of the CSV.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use schemas::{
    CHEXPERT_CLASSES, EntitySourceInfo, FileDigest, ImagePolicy, Manifest, Reject, Source, Stage,
};
use serde::Serialize;

use crate::csvio::{self, CsvError, Table};
use crate::entities::{Lexicon, Sidecar};
use crate::report::{Section, parse_report, training_text};
use crate::shard::{self, Outcome, Planned, Row, RunInfo, ShardError, ShardOptions};
use crate::tokenize::{ClipTokenizer, TokenizeError};
use crate::{entities, prepare};

/// File stem of the metadata CSV.
pub const METADATA_CSV: &str = "mimic-cxr-2.0.0-metadata";
/// File stem of the split CSV.
pub const SPLIT_CSV: &str = "mimic-cxr-2.0.0-split";

/// Which labeller's output fills the label columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Labeler {
    /// `mimic-cxr-2.0.0-chexpert.csv`.
    Chexpert,
    /// `mimic-cxr-2.0.0-negbio.csv`.
    Negbio,
}

impl Labeler {
    fn csv_stem(self) -> &'static str {
        match self {
            Labeler::Chexpert => "mimic-cxr-2.0.0-chexpert",
            Labeler::Negbio => "mimic-cxr-2.0.0-negbio",
        }
    }
}

/// Everything a MIMIC run needs. Defaults are the paper's choices.
#[derive(Debug, Clone, Serialize)]
pub struct MimicOptions {
    /// The release root (holds `files/` and the CSVs).
    pub root: PathBuf,
    /// Views kept (`ViewPosition` values); empty keeps all.
    pub views: Vec<String>,
    /// Report sections that make the training text.
    pub sections: Vec<Section>,
    /// Label source.
    pub labeler: Labeler,
    /// CLIP `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// ScispaCy sidecar; without it the built-in lexicon marks entities.
    pub ner: Option<PathBuf>,
    /// Image policy.
    pub image: ImagePolicy,
    /// Shard sizes and strictness.
    pub shards: ShardOptions,
}

/// Why a MIMIC run could not start or finish (bad rows are rejects, not errors).
#[derive(Debug, thiserror::Error)]
pub enum MimicError {
    /// An index CSV is missing or unusable.
    #[error(transparent)]
    Csv(#[from] CsvError),
    /// The tokenizer could not be loaded.
    #[error(transparent)]
    Tokenizer(#[from] TokenizeError),
    /// The sidecar could not be read.
    #[error(transparent)]
    Sidecar(#[from] entities::SidecarError),
    /// Writing shards failed.
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// A file could not be hashed or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One planned input row.
#[derive(Debug, Clone)]
struct Item {
    subject: String,
    study: String,
    dicom: String,
    view: String,
    split: String,
    labels: [Option<i8>; 14],
}

impl Item {
    fn study_dir(&self, root: &Path) -> PathBuf {
        let prefix = &self.subject[..self.subject.len().min(2)];
        root.join("files")
            .join(format!("p{prefix}"))
            .join(format!("p{}", self.subject))
    }

    fn report_path(&self, root: &Path) -> PathBuf {
        self.study_dir(root).join(format!("s{}.txt", self.study))
    }

    /// The image: the DICOM when present, else the JPEG of MIMIC-CXR-JPG;
    /// `Err` names both candidates when neither exists.
    fn image_path(&self, root: &Path) -> Result<PathBuf, (PathBuf, String)> {
        let dir = self.study_dir(root).join(format!("s{}", self.study));
        let dcm = dir.join(format!("{}.dcm", self.dicom));
        let jpg = dir.join(format!("{}.jpg", self.dicom));
        match (dcm.exists(), jpg.exists()) {
            (true, _) => Ok(dcm),
            (false, true) => Ok(jpg),
            (false, false) => {
                let reason = format!(
                    "image missing: neither {}.dcm nor {}.jpg exists",
                    self.dicom, self.dicom
                );
                Err((dcm, reason))
            }
        }
    }

    fn reject(&self, path: &Path, stage: Stage, reason: impl Into<String>) -> Outcome {
        Outcome::Rejected(Box::new(Reject {
            path: path.display().to_string(),
            subject_id: Some(self.subject.clone()),
            study_id: Some(self.study.clone()),
            image_id: Some(self.dicom.clone()),
            stage,
            reason: reason.into(),
        }))
    }
}

fn csv_reject(path: &Path, line: u64, ids: [Option<&str>; 3], reason: String) -> Reject {
    Reject {
        path: format!("{}:{line}", path.display()),
        subject_id: ids[0].map(str::to_string),
        study_id: ids[1].map(str::to_string),
        image_id: ids[2].map(str::to_string),
        stage: Stage::Csv,
        reason,
    }
}

/// Parses a label cell: `1.0`, `0.0`, `-1.0` or empty.
fn parse_label(cell: &str) -> Result<Option<i8>, String> {
    match cell {
        "" => Ok(None),
        _ => match cell.parse::<f32>() {
            Ok(1.0) => Ok(Some(1)),
            Ok(0.0) => Ok(Some(0)),
            Ok(-1.0) => Ok(Some(-1)),
            _ => Err(format!(
                "label value {cell:?} is not 1.0, 0.0, -1.0 or empty"
            )),
        },
    }
}

/// Reads the label CSV: (subject, study) → labels. Unparseable label rows are
/// logged and leave the study's labels blank (labels are optional; images are
/// not lost for them).
/// CheXpert labels of each (subject, study).
type LabelTable = HashMap<(String, String), [Option<i8>; 14]>;

fn read_labels(path: &Path) -> Result<LabelTable, CsvError> {
    let mut table = Table::open(path)?;
    let subject = table.column("subject_id")?;
    let study = table.column("study_id")?;
    let cols: Vec<usize> = CHEXPERT_CLASSES
        .iter()
        .map(|(name, _)| table.column(name))
        .collect::<Result<_, _>>()?;
    let mut labels = HashMap::new();
    for row in table.rows() {
        let row = match row {
            Ok(r) => r,
            Err(bad) => {
                tracing::warn!(
                    "{}:{}: {}; its study keeps blank labels",
                    path.display(),
                    bad.line,
                    bad.reason
                );
                continue;
            }
        };
        let mut values = [None; 14];
        let mut problem = None;
        for (i, &c) in cols.iter().enumerate() {
            match parse_label(row.get(c)) {
                Ok(v) => values[i] = v,
                Err(e) => problem = Some(e),
            }
        }
        if let Some(e) = problem {
            tracing::warn!(
                "{}:{}: {e}; the study keeps blank labels",
                path.display(),
                row.line
            );
            continue;
        }
        labels.insert(
            (row.get(subject).to_string(), row.get(study).to_string()),
            values,
        );
    }
    Ok(labels)
}

fn read_splits(path: &Path) -> Result<HashMap<String, String>, CsvError> {
    let mut table = Table::open(path)?;
    let dicom = table.column("dicom_id")?;
    let split = table.column("split")?;
    let mut splits = HashMap::new();
    for row in table.rows().flatten() {
        splits.insert(row.get(dicom).to_string(), row.get(split).to_string());
    }
    Ok(splits)
}

/// Lists the rows to write, from the metadata, split and label CSVs.
fn plan(root: &Path, labeler: Labeler) -> Result<Planned<Item>, CsvError> {
    let splits = read_splits(&csvio::find(root, SPLIT_CSV)?)?;
    let labels = read_labels(&csvio::find(root, labeler.csv_stem())?)?;
    let meta_path = csvio::find(root, METADATA_CSV)?;
    let mut table = Table::open(&meta_path)?;
    let [dicom, subject, study, view] =
        ["dicom_id", "subject_id", "study_id", "ViewPosition"].map(|c| table.column(c));
    let (dicom, subject, study, view) = (dicom?, subject?, study?, view?);

    let mut plan = Planned {
        items: Vec::new(),
        rejects: Vec::new(),
        seen: 0,
    };
    for row in table.rows() {
        plan.seen += 1;
        let row = match row {
            Ok(r) => r,
            Err(bad) => {
                plan.rejects
                    .push(csv_reject(&meta_path, bad.line, [None; 3], bad.reason));
                continue;
            }
        };
        let ids = [row.get(subject), row.get(study), row.get(dicom)];
        let opt_ids = ids.map(|s| (!s.is_empty()).then_some(s));
        let well_formed = ids[0].len() >= 2
            && ids[0].bytes().all(|b| b.is_ascii_digit())
            && !ids[1].is_empty()
            && ids[1].bytes().all(|b| b.is_ascii_digit())
            && !ids[2].is_empty()
            && !ids[2].contains(['/', '\\']);
        if !well_formed {
            let reason = format!(
                "malformed ids subject={:?} study={:?} dicom={:?}",
                ids[0], ids[1], ids[2]
            );
            plan.rejects
                .push(csv_reject(&meta_path, row.line, opt_ids, reason));
            continue;
        }
        let Some(split) = splits.get(ids[2]) else {
            let reason = format!("dicom_id {} has no row in {SPLIT_CSV}", ids[2]);
            plan.rejects
                .push(csv_reject(&meta_path, row.line, opt_ids, reason));
            continue;
        };
        let key = (ids[0].to_string(), ids[1].to_string());
        plan.items.push(Item {
            subject: ids[0].to_string(),
            study: ids[1].to_string(),
            dicom: ids[2].to_string(),
            view: row.get(view).to_string(),
            split: split.clone(),
            labels: labels.get(&key).copied().unwrap_or([None; 14]),
        });
    }
    plan.items
        .sort_by(|a, b| (&a.subject, &a.study, &a.dicom).cmp(&(&b.subject, &b.study, &b.dicom)));
    Ok(plan)
}

/// The per-row work, shared by all rayon workers.
struct Job<'a> {
    opts: &'a MimicOptions,
    tokenizer: ClipTokenizer,
    sidecar: Option<Sidecar>,
    lexicon: Lexicon,
}

impl Job<'_> {
    fn process(&self, it: &Item) -> Outcome {
        let root = &self.opts.root;
        if !view_kept(&self.opts.views, &it.view) {
            return Outcome::Filtered;
        }
        // Text first: it is cheap, and a row rejected for its report is not decoded.
        let report_path = it.report_path(root);
        let report = match std::fs::read(&report_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => {
                return it.reject(
                    &report_path,
                    Stage::Report,
                    format!("report unreadable: {e}"),
                );
            }
        };
        let sections = parse_report(&report);
        let Some(text) = training_text(&sections, &self.opts.sections) else {
            return it.reject(
                &report_path,
                Stage::Report,
                "the report has none of the sections used for training",
            );
        };
        let tokens = match self.tokenizer.encode(&text) {
            Ok(t) => t,
            Err(e) => return it.reject(&report_path, Stage::Report, format!("tokenizer: {e}")),
        };
        let (spans, source) = match &self.sidecar {
            Some(sidecar) => match sidecar.check(&it.study, &text) {
                Ok(spans) => (spans, "sidecar"),
                Err(reason) => {
                    let path = self.opts.ner.as_deref().unwrap_or(Path::new("sidecar"));
                    return it.reject(path, Stage::Entities, reason.to_string());
                }
            },
            None => (self.lexicon.find(&text), "lexicon"),
        };
        let mask = entities::token_entity_mask(&text, &spans, &tokens.offsets);

        let image_path = match it.image_path(root) {
            Ok(p) => p,
            Err((path, reason)) => return it.reject(&path, Stage::ImageRead, reason),
        };
        let is_dicom = image_path.extension().is_some_and(|e| e == "dcm");
        let prepared = if is_dicom {
            prepare::dicom(&image_path, &self.opts.image)
        } else {
            prepare::jpeg8(&image_path, &self.opts.image)
        };
        let img = match prepared {
            Ok(img) => img,
            Err((stage, reason)) => return it.reject(&image_path, stage, reason),
        };
        Outcome::Row(Box::new(img.into_row(Row {
            source: Source::Mimic.name().into(),
            subject_id: it.subject.clone(),
            study_id: it.study.clone(),
            image_id: it.dicom.clone(),
            split: it.split.clone(),
            view: it.view.clone(),
            paired: true,
            report: Some(report),
            findings: sections.findings,
            impression: sections.impression,
            last_paragraph: sections.last_paragraph,
            comparison: sections.comparison,
            indication: sections.indication,
            text: Some(text),
            token_ids: Some(tokens.ids),
            truncated: Some(tokens.truncated),
            entity_spans: Some(spans),
            entity_mask: Some(mask),
            entity_source: Some(source.into()),
            labels: it.labels,
            ..Default::default()
        })))
    }
}

/// True when `view` passes the filter (an empty filter keeps everything).
pub fn view_kept(views: &[String], view: &str) -> bool {
    views.is_empty() || views.iter().any(|v| v.eq_ignore_ascii_case(view.trim()))
}

fn digest(path: &Path) -> Result<FileDigest, MimicError> {
    let sha256 = shard::sha256_file(path).map_err(|source| MimicError::Io {
        path: path.into(),
        source,
    })?;
    Ok(FileDigest {
        path: path.display().to_string(),
        sha256,
    })
}

/// Runs `ingest mimic`: plans, writes shards (resuming an interrupted run in
/// the same folder), then the reject log and the manifest.
pub fn run(
    opts: &MimicOptions,
    out: &Path,
    progress: &ProgressBar,
) -> Result<Manifest, MimicError> {
    let planned = plan(&opts.root, opts.labeler)?;
    let tokenizer = ClipTokenizer::from_file(&opts.tokenizer)?;
    let tokenizer_digest = digest(&opts.tokenizer)?;
    let (sidecar, sidecar_digest) = match &opts.ner {
        Some(path) => (Some(entities::load_sidecar(path)?), Some(digest(path)?)),
        None => (None, None),
    };
    let info = RunInfo {
        source: Source::Mimic,
        arguments: serde_json::to_value(opts).expect("serialisable"),
        image_policy: opts.image.clone(),
        tokenizer: Some(tokenizer_digest),
        entities: Some(EntitySourceInfo {
            kind: if sidecar_digest.is_some() {
                "sidecar"
            } else {
                "lexicon"
            }
            .into(),
            sidecar: sidecar_digest,
        }),
    };
    let job = Job {
        opts,
        tokenizer,
        sidecar,
        lexicon: Lexicon::builtin(),
    };
    Ok(shard::run(
        out,
        &opts.shards,
        info,
        planned,
        |it| job.process(it),
        progress,
    )?)
}

/// One line of the sections export: the exact text that NER must run on.
#[derive(Debug, Serialize)]
struct SectionLine<'a> {
    study_id: &'a str,
    text: String,
}

/// Runs `ingest sections`: writes, per study, the training text that
/// `ingest mimic` will tokenize, as JSON Lines for `python/ner_sidecar.py`.
/// Returns (studies written, studies without a usable report).
pub fn export_sections(
    root: &Path,
    sections: &[Section],
    out: &Path,
) -> Result<(usize, usize), MimicError> {
    let plan = plan(root, Labeler::Chexpert)?;
    let mut seen = std::collections::BTreeSet::new();
    let mut lines = Vec::new();
    let mut missing = 0;
    for it in &plan.items {
        if !seen.insert((it.subject.clone(), it.study.clone())) {
            continue;
        }
        let text = std::fs::read(it.report_path(root))
            .ok()
            .and_then(|b| training_text(&parse_report(&String::from_utf8_lossy(&b)), sections));
        match text {
            Some(text) => {
                serde_json::to_writer(
                    &mut lines,
                    &SectionLine {
                        study_id: &it.study,
                        text,
                    },
                )
                .expect("serialisable");
                lines.push(b'\n');
            }
            None => missing += 1,
        }
    }
    shard::write_atomic(out, &lines)?;
    Ok((seen.len() - missing, missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_the_four_chexpert_values_and_nothing_else() {
        assert_eq!(parse_label("1.0"), Ok(Some(1)));
        assert_eq!(parse_label("0.0"), Ok(Some(0)));
        assert_eq!(parse_label("-1.0"), Ok(Some(-1)));
        assert_eq!(parse_label(""), Ok(None));
        assert!(parse_label("2.0").is_err());
        assert!(parse_label("yes").is_err());
    }

    #[test]
    fn view_filter_is_case_insensitive_and_empty_keeps_all() {
        let views = vec!["PA".to_string(), "AP".to_string()];
        assert!(view_kept(&views, "pa"));
        assert!(!view_kept(&views, "LATERAL"));
        assert!(!view_kept(&views, ""));
        assert!(view_kept(&[], "LATERAL"));
    }
}
