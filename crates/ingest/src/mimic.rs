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
use text::entities::{self, Lexicon, Sidecar};
use text::report::{Section, decode_report_file, parse_report, training_text};
use text::tokenize::{ClipTokenizer, TokenizeError};

use crate::csvio::{self, CsvError, Table};
use crate::prepare;
use crate::shard::{self, Outcome, Planned, Row, RunInfo, ShardError, ShardOptions};

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
    /// An index CSV that ends early (truncated gzip) rejects the images it no
    /// longer covers instead of stopping the run. Recorded only when set, so
    /// the arguments of ordinary runs stay as they were.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_truncated_csv: bool,
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

/// A row of an index CSV that did not parse: where it is and why, kept to
/// reject the images it would have described.
#[derive(Debug, Clone)]
struct BadIndexRow {
    path: PathBuf,
    line: u64,
    reason: String,
}

impl BadIndexRow {
    fn reject(&self, ids: [Option<&str>; 3], what: &str) -> Reject {
        csv_reject(
            &self.path,
            self.line,
            ids,
            format!("{what} does not parse: {}", self.reason),
        )
    }
}

/// One index CSV read as a lookup: the good rows by key, the keys of rows that
/// did not parse, bad rows that name no key (rejects of their own), and where
/// the file ended early when that was allowed.
struct Index<K, V> {
    good: HashMap<K, V>,
    bad: HashMap<K, BadIndexRow>,
    orphans: Vec<Reject>,
    truncated: Option<csvio::Truncation>,
}

/// Reads an index CSV keyed by `key` with values from `value`; a row whose
/// value does not parse, or that the CSV layer could not split, is bad under
/// its key (or an orphan reject when even the key is empty).
fn read_index<K: std::hash::Hash + Eq, V>(
    path: &Path,
    allow_truncated: bool,
    key_columns: &[&str],
    key: impl Fn(&[&str]) -> K,
    value_columns: &[&str],
    value: impl Fn(&[&str]) -> Result<V, String>,
) -> Result<Index<K, V>, CsvError> {
    let mut table = Table::open(path)?;
    let keys: Vec<usize> = key_columns
        .iter()
        .map(|c| table.column(c))
        .collect::<Result<_, _>>()?;
    let values: Vec<usize> = value_columns
        .iter()
        .map(|c| table.column(c))
        .collect::<Result<_, _>>()?;
    let mut index = Index {
        good: HashMap::new(),
        bad: HashMap::new(),
        orphans: Vec::new(),
        truncated: None,
    };
    index.truncated = csvio::read_all(&mut table, allow_truncated, |row| {
        let (line, key_cells, parsed) = match &row {
            Ok(r) => {
                let cells: Vec<&str> = values.iter().map(|&c| r.get(c)).collect();
                let k: Vec<&str> = keys.iter().map(|&c| r.get(c)).collect();
                (r.line, k, value(&cells))
            }
            Err(bad) => {
                let k: Vec<&str> = keys.iter().map(|&c| bad.get(c)).collect();
                (bad.line, k, Err(bad.reason.clone()))
            }
        };
        match parsed {
            Ok(v) => {
                index.good.insert(key(&key_cells), v);
            }
            Err(reason) if key_cells.iter().any(|c| c.is_empty()) => {
                index
                    .orphans
                    .push(csv_reject(path, line, [None; 3], reason));
            }
            Err(reason) => {
                let bad = BadIndexRow {
                    path: path.to_path_buf(),
                    line,
                    reason,
                };
                index.bad.insert(key(&key_cells), bad);
            }
        }
    })?;
    Ok(index)
}

/// CheXpert (or NegBio) labels of each (subject, study).
type LabelIndex = Index<(String, String), [Option<i8>; 14]>;

/// Reads the label CSV: (subject, study) → labels. A row that does not parse
/// is kept as bad, so that its study's images are rejected rather than
/// written with blank labels.
fn read_labels(path: &Path, allow_truncated: bool) -> Result<LabelIndex, CsvError> {
    let names: Vec<&str> = CHEXPERT_CLASSES.iter().map(|(name, _)| *name).collect();
    read_index(
        path,
        allow_truncated,
        &["subject_id", "study_id"],
        |k| (k[0].to_string(), k[1].to_string()),
        &names,
        |cells| {
            let mut values = [None; 14];
            for (v, cell) in values.iter_mut().zip(cells) {
                *v = parse_label(cell)?;
            }
            Ok(values)
        },
    )
}

/// Reads the split CSV: dicom_id → split.
fn read_splits(path: &Path, allow_truncated: bool) -> Result<Index<String, String>, CsvError> {
    read_index(
        path,
        allow_truncated,
        &["dicom_id"],
        |k| k[0].to_string(),
        &["split"],
        |cells| match cells[0] {
            "" => Err("empty split".to_string()),
            s => Ok(s.to_string()),
        },
    )
}

/// Lists the rows to write, from the metadata, split and label CSVs.
///
/// Every row of the metadata CSV is seen once and becomes an item or a
/// reject; so does every split or label row that did not parse and names no
/// image. With `allow_truncated`, an index CSV that ends early rejects the
/// images it no longer covers instead of stopping the run.
fn plan(root: &Path, labeler: Labeler, allow_truncated: bool) -> Result<Planned<Item>, CsvError> {
    let splits = read_splits(&csvio::find(root, SPLIT_CSV)?, allow_truncated)?;
    let labels = read_labels(&csvio::find(root, labeler.csv_stem())?, allow_truncated)?;
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
    for orphan in splits.orphans.iter().chain(&labels.orphans) {
        plan.seen += 1;
        plan.rejects.push(orphan.clone());
    }
    let mut listed = std::collections::HashSet::new();
    let meta_truncated = csvio::read_all(&mut table, allow_truncated, |row| {
        plan.seen += 1;
        let row = match row {
            Ok(r) => r,
            Err(bad) => {
                let ids = [bad.get(subject), bad.get(study), bad.get(dicom)];
                let opt_ids = ids.map(|s| (!s.is_empty()).then_some(s));
                listed.insert(ids[2].to_string());
                plan.rejects.push(csv_reject(
                    &meta_path,
                    bad.line,
                    opt_ids,
                    bad.reason.clone(),
                ));
                return;
            }
        };
        let ids = [row.get(subject), row.get(study), row.get(dicom)];
        listed.insert(ids[2].to_string());
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
            return;
        }
        let split = match (splits.good.get(ids[2]), splits.bad.get(ids[2])) {
            (_, Some(bad)) => {
                plan.rejects.push(bad.reject(opt_ids, "its split row"));
                return;
            }
            (Some(split), None) => split,
            (None, None) => {
                let mut reason = format!("dicom_id {} has no row in {SPLIT_CSV}", ids[2]);
                if let Some(t) = &splits.truncated {
                    reason.push_str(&format!(" ({t})"));
                }
                plan.rejects
                    .push(csv_reject(&meta_path, row.line, opt_ids, reason));
                return;
            }
        };
        let key = (ids[0].to_string(), ids[1].to_string());
        let item_labels = match (
            labels.good.get(&key),
            labels.bad.get(&key),
            &labels.truncated,
        ) {
            (_, Some(bad), _) => {
                plan.rejects.push(bad.reject(opt_ids, "its label row"));
                return;
            }
            (Some(values), None, _) => *values,
            // A study the label file would have listed after its break: its
            // labels are unknown, not blank.
            (None, None, Some(t)) => {
                let reason = format!("no label row for its study: {t}");
                plan.rejects
                    .push(csv_reject(&t.path, t.line, opt_ids, reason));
                return;
            }
            // Not every study of the release has a label row; those images
            // keep blank labels, as the release has them.
            (None, None, None) => [None; 14],
        };
        plan.items.push(Item {
            subject: ids[0].to_string(),
            study: ids[1].to_string(),
            dicom: ids[2].to_string(),
            view: row.get(view).to_string(),
            split: split.clone(),
            labels: item_labels,
        });
    })?;
    if let Some(t) = meta_truncated {
        // The split CSV lists every image: those the metadata CSV no longer
        // reaches are rejects, in the split CSV's (sorted) order.
        let mut lost: Vec<&String> = splits
            .good
            .keys()
            .chain(splits.bad.keys())
            .filter(|d| !listed.contains(d.as_str()))
            .collect();
        lost.sort();
        lost.dedup();
        for d in &lost {
            plan.seen += 1;
            let reason = format!("image listed in {SPLIT_CSV} but not reached: {t}");
            plan.rejects.push(csv_reject(
                &t.path,
                t.line,
                [None, None, Some(d.as_str())],
                reason,
            ));
        }
        if lost.is_empty() {
            plan.seen += 1;
            let reason = format!("{t}; the rows after it are unknown");
            plan.rejects
                .push(csv_reject(&t.path, t.line, [None; 3], reason));
        }
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
            Ok(bytes) => decode_report_file(&report_path, &bytes),
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

/// The files whose bytes decide the rows: the index CSVs, then per row its
/// report and both image candidates (whichever exists is the one read).
fn input_files(opts: &MimicOptions, items: &[Item]) -> Result<Vec<PathBuf>, CsvError> {
    let root = &opts.root;
    let mut files = Vec::with_capacity(3 + 3 * items.len());
    for stem in [METADATA_CSV, SPLIT_CSV, opts.labeler.csv_stem()] {
        files.push(csvio::find(root, stem)?);
    }
    for it in items {
        let image = it.study_dir(root).join(format!("s{}", it.study));
        files.push(it.report_path(root));
        files.push(image.join(format!("{}.dcm", it.dicom)));
        files.push(image.join(format!("{}.jpg", it.dicom)));
    }
    Ok(files)
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
    let planned = plan(&opts.root, opts.labeler, opts.allow_truncated_csv)?;
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
        inputs: input_files(opts, &planned.items)?,
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
    let plan = plan(root, Labeler::Chexpert, false)?;
    let mut seen = std::collections::BTreeSet::new();
    let mut lines = Vec::new();
    let mut missing = 0;
    for it in &plan.items {
        if !seen.insert((it.subject.clone(), it.study.clone())) {
            continue;
        }
        let path = it.report_path(root);
        let text = std::fs::read(&path)
            .ok()
            .and_then(|b| training_text(&parse_report(&decode_report_file(&path, &b)), sections));
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
