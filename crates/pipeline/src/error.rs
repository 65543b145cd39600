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
    /// A shard folder or shard failed its checks (manifest, magic, footer,
    /// schema version, row count, sha256) or a column read: the `shards`
    /// crate's error, which names the file.
    #[error(transparent)]
    Shard(#[from] shards::ShardsError),
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

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> PipelineError + '_ {
    move |source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    }
}
