//! Typed errors: each names the file (and row) the user has to look at.

use std::path::PathBuf;

/// A row whose image could not be decoded: where it is and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BadRow {
    /// The shard file.
    pub path: PathBuf,
    /// Row index inside the shard.
    pub row: u32,
    /// Subject id of the row.
    pub subject_id: String,
    /// Study id of the row.
    pub study_id: String,
    /// Image id of the row.
    pub image_id: String,
    /// What went wrong, for a person.
    pub reason: String,
}

impl std::fmt::Display for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} row {} (subject {}, study {}, image {}): {}",
            self.path.display(),
            self.row,
            self.subject_id,
            self.study_id,
            self.image_id,
            self.reason
        )
    }
}

/// Why the loader could not open a source or make a batch.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A shard folder has no `manifest.json`.
    #[error("{path}: manifest missing (is this a finished ingest output folder?)")]
    MissingManifest {
        /// The manifest path that does not exist.
        path: PathBuf,
    },
    /// `manifest.json` is not a manifest.
    #[error("{path}: not a valid manifest: {message}")]
    BadManifest {
        /// The manifest.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The manifest or shard was written with another schema version.
    #[error("{path}: schema version {found}, this loader reads version {expected}")]
    SchemaVersion {
        /// The manifest or shard.
        path: PathBuf,
        /// Version found.
        found: String,
        /// Version this build reads.
        expected: u32,
    },
    /// A shard listed in the manifest is not on disk.
    #[error("{path}: shard listed in the manifest is missing")]
    MissingShard {
        /// The shard.
        path: PathBuf,
    },
    /// A shard ends early: it does not end with the Parquet magic, so its footer is gone.
    #[error("{path}: truncated shard ({len} bytes, no Parquet footer at the end)")]
    Truncated {
        /// The shard.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
    },
    /// A shard's footer (Parquet metadata) does not parse.
    #[error("{path}: bad Parquet footer: {message}")]
    BadFooter {
        /// The shard.
        path: PathBuf,
        /// The reader's message.
        message: String,
    },
    /// A shard holds another number of rows than its manifest entry says.
    #[error("{path}: manifest says {manifest} rows, the file holds {file}")]
    RowCountMismatch {
        /// The shard.
        path: PathBuf,
        /// Rows in the manifest entry.
        manifest: u64,
        /// Rows in the file's footer.
        file: u64,
    },
    /// A shard's sha256 differs from its manifest entry.
    #[error("{path}: sha256 {file} does not match the manifest's {manifest}")]
    ShaMismatch {
        /// The shard.
        path: PathBuf,
        /// sha256 in the manifest.
        manifest: String,
        /// sha256 of the file on disk.
        file: String,
    },
    /// A column the loader needs is missing or has another type.
    #[error("{path}: column {column}: {message}")]
    Column {
        /// The shard.
        path: PathBuf,
        /// The column name.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// Parquet could not read a row group (corrupt page, bad compression).
    #[error("{path}: row group {row_group}: {message}")]
    Read {
        /// The shard.
        path: PathBuf,
        /// The row group.
        row_group: usize,
        /// The reader's message.
        message: String,
    },
    /// A row's image did not decode and the policy is [`crate::BadRowPolicy::Fail`].
    #[error("bad row: {0}")]
    BadRow(Box<BadRow>),
    /// Too many replacement rows in a row were bad as well (policy `Skip`).
    #[error("{tried} candidate rows for one batch slot were all bad; last: {last}")]
    TooManyBadRows {
        /// How many candidates were tried.
        tried: usize,
        /// The last bad row.
        last: Box<BadRow>,
    },
    /// The configuration cannot be satisfied by the sources.
    #[error("configuration: {0}")]
    Config(String),
    /// A loader thread panicked or stopped without a message.
    #[error("loader thread stopped: {0}")]
    Stopped(String),
}

/// The shard checks and column reads of `shards`, as the loader's errors
/// (same variants and messages as when the loader read shards itself).
impl From<shards::ShardsError> for PipelineError {
    fn from(e: shards::ShardsError) -> PipelineError {
        use shards::ShardsError as E;
        match e {
            E::Io { path, source } => PipelineError::Io { path, source },
            E::MissingManifest { path } => PipelineError::MissingManifest { path },
            E::BadManifest { path, source } => PipelineError::BadManifest {
                path,
                message: source.to_string(),
            },
            E::SchemaVersion {
                path,
                found,
                expected,
            } => PipelineError::SchemaVersion {
                path,
                found,
                expected,
            },
            E::MissingShard { path } => PipelineError::MissingShard { path },
            E::Truncated { path, len } => PipelineError::Truncated { path, len },
            E::BadFooter { path, message } => PipelineError::BadFooter { path, message },
            E::RowCountMismatch {
                path,
                manifest,
                file,
            } => PipelineError::RowCountMismatch {
                path,
                manifest,
                file,
            },
            E::ShaMismatch {
                path,
                manifest,
                file,
            } => PipelineError::ShaMismatch {
                path,
                manifest,
                file,
            },
            E::Column {
                path,
                column,
                message,
            } => PipelineError::Column {
                path,
                column,
                message,
            },
            E::Parquet { path, source } => PipelineError::Read {
                path,
                row_group: 0,
                message: source.to_string(),
            },
        }
    }
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> PipelineError + '_ {
    move |source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    }
}
