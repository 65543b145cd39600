//! Stats: reads shard folders back and writes a statistics report (the
//! `ingest stats` subcommand). It reads only the on-disk format of the
//! `schemas` crate, so it depends on no writer of it.
//!
//! [`write_report`] reads each folder's `manifest.json`, every shard it lists
//! and `rejects.jsonl`, and writes into the output folder:
//!
//! - `stats.json`: the [`Stats`] struct, every figure as a number;
//! - `stats.md`: short tables and the charts, for a person to look at;
//! - PNG charts: label prevalence, report lengths, entities, image sizes,
//!   intensity histograms (the list is in [`Stats::charts`]).
//!
//! Shards are read column by column, only the columns the report needs, one
//! batch of rows at a time: memory holds one batch and the running counts, so
//! a folder of any size can be summarised. Every image is decoded (in
//! parallel, on rayon's pool) to build the intensity histograms.
//!
//! Each shard's sha256 is checked against its manifest before it is read
//! (a damaged shard is an error, not wrong figures) unless
//! [`ReportOptions::verify_checksums`] is off.
//!
//! Counts are checked against each other: the manifest's
//! `seen = written + filtered + rejected`, the shard rows against the
//! manifest, the reject log against the manifest's reject counts. A mismatch
//! does not stop the report; it is listed in [`Stats::problems`] and shown at
//! the top of `stats.md`.
//!
//! ```no_run
//! # use std::path::{Path, PathBuf};
//! let stats = stats::write_report(
//!     &[PathBuf::from("shards/mimic"), PathBuf::from("shards/padchest")],
//!     Path::new("shards/stats"),
//! )?;
//! println!("{} rows, {} paired", stats.rows, stats.paired);
//! # Ok::<(), stats::StatsError>(())
//! ```

#![deny(missing_docs)]

mod charts;
mod collect;
mod markdown;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemas::{Counts, ImageEncoding, Source, Stage};
use serde::{Deserialize, Serialize};

/// File name of the statistics in JSON.
pub const STATS_JSON: &str = "stats.json";
/// File name of the human-readable report.
pub const STATS_MD: &str = "stats.md";

/// Why the report could not be made. Each variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// No folder was given.
    #[error("no shard folder given")]
    NoInput,
    /// The folder has no `manifest.json`: not a shard folder.
    #[error("{}: no manifest.json here; is this a shard folder?", dir.display())]
    MissingManifest {
        /// The folder.
        dir: PathBuf,
    },
    /// A shard listed in the manifest is not on disk.
    #[error("{}: shard listed in {} is missing", path.display(), manifest.display())]
    MissingShard {
        /// The shard file.
        path: PathBuf,
        /// The manifest that lists it.
        manifest: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `manifest.json` is not a manifest.
    #[error("{}: not a valid manifest: {source}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The manifest names a shard format this tool does not read.
    #[error("{}: schema version {found}, this tool reads version {expected}", path.display())]
    SchemaVersion {
        /// The manifest file.
        path: PathBuf,
        /// The version it names.
        found: String,
        /// [`schemas::SCHEMA_VERSION`].
        expected: u32,
    },
    /// A shard's bytes are not those its manifest lists.
    #[error(
        "{}: sha256 {found} does not match {expected} listed in {}; the shard is damaged or was changed",
        path.display(),
        manifest.display()
    )]
    Checksum {
        /// The shard file.
        path: PathBuf,
        /// The manifest that lists it.
        manifest: PathBuf,
        /// The sha256 in the manifest.
        expected: String,
        /// The sha256 of the file.
        found: String,
    },
    /// A shard is not readable Parquet.
    #[error("{}: cannot read Parquet: {source}", path.display())]
    Parquet {
        /// The shard file.
        path: PathBuf,
        /// The Parquet or Arrow error.
        source: parquet::errors::ParquetError,
    },
    /// A shard lacks a column or holds it with the wrong type.
    #[error("{}: column `{column}`: {reason}", path.display())]
    Column {
        /// The shard file.
        path: PathBuf,
        /// The column.
        column: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A line of `rejects.jsonl` is not a reject record.
    #[error("{}: line {line}: not a reject record: {source}", path.display())]
    Reject {
        /// The reject log.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A chart could not be drawn or saved.
    #[error(transparent)]
    Chart(#[from] ::charts::ChartError),
    /// `stats.json` could not be serialised.
    #[error("{}: cannot serialise statistics: {source}", path.display())]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// Everything the report shows, as numbers. Written as `stats.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// One entry per folder, in the order given.
    pub folders: Vec<FolderStats>,
    /// Rows read from all shards.
    pub rows: u64,
    /// Rows with a report.
    pub paired: u64,
    /// Image-only rows.
    pub unpaired: u64,
    /// Rows per `source` value.
    pub by_source: BTreeMap<String, u64>,
    /// Rows per `split` value.
    pub by_split: BTreeMap<String, u64>,
    /// Rows per `view` value.
    pub by_view: BTreeMap<String, u64>,
    /// Rows per source, then split.
    pub by_source_split: BTreeMap<String, BTreeMap<String, u64>>,
    /// Rows per source, then view.
    pub by_source_view: BTreeMap<String, BTreeMap<String, u64>>,
    /// CheXpert label counts per source: one entry per class, in
    /// [`schemas::CHEXPERT_CLASSES`] order.
    pub labels: BTreeMap<String, Vec<LabelCounts>>,
    /// PadChest `finding_labels`.
    pub finding_labels: FindingLabelStats,
    /// Report text and tokens.
    pub text: TextStats,
    /// Entity spans.
    pub entities: EntityStats,
    /// Image sizes and intensities.
    pub images: ImageStats,
    /// The reject logs.
    pub rejects: RejectStats,
    /// The manifests' counts, summed over folders.
    pub counts: Counts,
    /// Every check that failed, as a sentence. Empty when all counts agree.
    pub problems: Vec<String>,
    /// File names of the charts written next to `stats.md`.
    pub charts: Vec<String>,
}

/// One shard folder: what its manifest says and what was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FolderStats {
    /// The folder, as given.
    pub path: String,
    /// The release it was made from.
    pub source: Source,
    /// How its images are stored.
    pub encoding: ImageEncoding,
    /// Shards listed in the manifest.
    pub shards: usize,
    /// Rows the manifest lists over its shards.
    pub rows_listed: u64,
    /// Rows read from the shards.
    pub rows_read: u64,
    /// The manifest's counts.
    pub counts: Counts,
    /// Lines of `rejects.jsonl`.
    pub rejects_logged: u64,
    /// True when `seen = written + filtered + rejected` and the shards, the
    /// reject log and the manifest agree.
    pub reconciles: bool,
}

/// Counts of one CheXpert class over the rows of one source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelCounts {
    /// The class as the release names it (`Pleural Effusion`).
    pub class: String,
    /// Label 1.
    pub positive: u64,
    /// Label 0.
    pub negative: u64,
    /// Label -1.
    pub uncertain: u64,
    /// Null: not mentioned.
    pub blank: u64,
    /// Any other value (a malformed shard); expected 0.
    pub other: u64,
}

/// A value and how often it occurs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frequency {
    /// The value.
    pub value: String,
    /// Occurrences.
    pub count: u64,
}

/// Summary of an integer quantity. All zero when `count` is 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Values summarised.
    pub count: u64,
    /// Smallest value.
    pub min: i64,
    /// Lower median.
    pub median: i64,
    /// Mean.
    pub mean: f64,
    /// Largest value.
    pub max: i64,
}

/// A histogram of integer values in equal bins:
/// bin `i` holds `start + i·width ≤ v < start + (i+1)·width`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Lower edge of the first bin.
    pub start: i64,
    /// Width of every bin.
    pub width: i64,
    /// Values per bin.
    pub counts: Vec<u64>,
}

/// PadChest finding labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingLabelStats {
    /// Rows with at least one label.
    pub rows_with_labels: u64,
    /// Labels over all rows.
    pub labels: u64,
    /// Distinct labels.
    pub distinct: u64,
    /// The most frequent labels, at most 30, most frequent first.
    pub top: Vec<Frequency>,
}

/// Report text and its tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TextStats {
    /// Rows with a `text`.
    pub reports: u64,
    /// Length of `text` in characters (Unicode scalar values).
    pub chars: Summary,
    /// Histogram of [`TextStats::chars`].
    pub chars_histogram: Histogram,
    /// Length of `token_ids` (start and end tokens included).
    pub tokens: Summary,
    /// Rows per token count: entry `n` counts rows with `n` tokens.
    pub tokens_per_length: Vec<u64>,
    /// The context length the tokenizer cuts at.
    pub context_length: u32,
    /// Rows whose `truncated` is true.
    pub truncated: u64,
    /// Rows whose `token_ids` fill the context exactly.
    pub at_context: u64,
}

/// Entity spans over the report text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EntityStats {
    /// Rows with a `text` (the reports the spans belong to).
    pub reports: u64,
    /// Spans over all reports.
    pub spans: u64,
    /// Spans per report.
    pub per_report: Summary,
    /// Reports per span count: entry `n` counts reports with `n` spans.
    pub per_report_counts: Vec<u64>,
    /// Reports per `entity_source` (`sidecar`, `lexicon`; `none` when null).
    pub by_source: BTreeMap<String, u64>,
    /// Spans per span label (`ENTITY`, `DISEASE`, ...).
    pub by_label: BTreeMap<String, u64>,
    /// Distinct entity strings (trimmed, lower-cased).
    pub distinct: u64,
    /// The most frequent entity strings, at most 30, most frequent first.
    pub top: Vec<Frequency>,
    /// Spans whose offsets do not fit their text (expected 0).
    pub invalid_spans: u64,
}

/// Image sizes and pixel intensities.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageStats {
    /// `image_height`: stored height.
    pub stored_height: Summary,
    /// `image_width`: stored width.
    pub stored_width: Summary,
    /// `orig_rows`: original height.
    pub orig_rows: Summary,
    /// `orig_cols`: original width.
    pub orig_cols: Summary,
    /// The most common stored sizes, at most 10, as `width×height`.
    pub common_stored: Vec<Frequency>,
    /// The most common original sizes, at most 10, as `cols×rows`.
    pub common_orig: Vec<Frequency>,
    /// 256-bin histogram of stored pixel values per source.
    pub intensity: BTreeMap<String, Vec<u64>>,
    /// Images decoded.
    pub decoded: u64,
    /// Pixels counted in the histograms.
    pub pixels: u64,
    /// Images that could not be decoded (expected 0).
    pub undecodable: u64,
    /// The first few of them: `image_id in file: reason`.
    pub undecodable_examples: Vec<String>,
}

/// The reject logs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RejectStats {
    /// Records over all logs.
    pub records: u64,
    /// Records per stage.
    pub by_stage: BTreeMap<Stage, u64>,
    /// Records grouped by stage and reason, most frequent first.
    pub reasons: Vec<ReasonCount>,
}

/// One group of reject reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    /// The stage.
    pub stage: Stage,
    /// The reason's group: the text before its first `:`, digits shown as
    /// `#`, at most 60 characters.
    pub reason: String,
    /// Records in the group.
    pub count: u64,
    /// One full reason of the group.
    pub example: String,
}

/// Reads the shard folders and writes `stats.json`, `stats.md` and the charts
/// into `out` (created if missing), checking each shard's sha256 against its
/// manifest first. Returns the statistics written.
pub fn write_report(shard_dirs: &[PathBuf], out: &Path) -> Result<Stats, StatsError> {
    write_report_with(shard_dirs, out, &ReportOptions::default())
}

/// How [`write_report_with`] reads the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportOptions {
    /// Check each shard's sha256 against its manifest before reading it
    /// (on by default; off reads each shard once instead of twice).
    pub verify_checksums: bool,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            verify_checksums: true,
        }
    }
}

/// [`write_report`] with options.
pub fn write_report_with(
    shard_dirs: &[PathBuf],
    out: &Path,
    opts: &ReportOptions,
) -> Result<Stats, StatsError> {
    let (mut stats, detail) = collect::collect(shard_dirs, opts)?;
    std::fs::create_dir_all(out).map_err(|source| io(out, source))?;
    stats.charts = charts::draw_all(&stats, &detail, out)?;

    let json_path = out.join(STATS_JSON);
    let json = serde_json::to_string_pretty(&stats).map_err(|source| StatsError::Json {
        path: json_path.clone(),
        source,
    })?;
    std::fs::write(&json_path, json + "\n").map_err(|source| io(&json_path, source))?;

    let md_path = out.join(STATS_MD);
    std::fs::write(&md_path, markdown::render(&stats)).map_err(|source| io(&md_path, source))?;
    Ok(stats)
}

fn io(path: &Path, source: std::io::Error) -> StatsError {
    StatsError::Io {
        path: path.to_path_buf(),
        source,
    }
}
