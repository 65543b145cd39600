//! The one error type of shard I/O; every variant names the file.

use std::path::{Path, PathBuf};

/// Why a manifest or shard could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ShardsError {
    /// A file could not be read or written.
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
    #[error("{path}: not a valid manifest: {source}")]
    BadManifest {
        /// The manifest.
        path: PathBuf,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// The manifest or shard was written with another schema version.
    #[error("{path}: schema version {found}, this build reads version {expected}")]
    SchemaVersion {
        /// The manifest or shard.
        path: PathBuf,
        /// Version found (`none` when a shard records none).
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
    /// A column is missing or has another type.
    #[error("{path}: column {column}: {message}")]
    Column {
        /// The shard.
        path: PathBuf,
        /// The column name.
        column: String,
        /// What is wrong (`missing`, `not utf8`, ...).
        message: String,
    },
    /// Parquet or Arrow could not read the shard (corrupt page, bad compression).
    #[error("{path}: {source}")]
    Parquet {
        /// The shard.
        path: PathBuf,
        /// The reader's error.
        source: parquet::errors::ParquetError,
    },
}

impl ShardsError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ShardsError::Io { path, .. }
            | ShardsError::MissingManifest { path }
            | ShardsError::BadManifest { path, .. }
            | ShardsError::SchemaVersion { path, .. }
            | ShardsError::MissingShard { path }
            | ShardsError::Truncated { path, .. }
            | ShardsError::BadFooter { path, .. }
            | ShardsError::RowCountMismatch { path, .. }
            | ShardsError::ShaMismatch { path, .. }
            | ShardsError::Column { path, .. }
            | ShardsError::Parquet { path, .. } => path,
        }
    }

    /// The message without the leading path, for callers whose own error
    /// type adds the path itself.
    pub fn reason(&self) -> String {
        let text = self.to_string();
        let prefix = format!("{}: ", self.path().display());
        text.strip_prefix(&prefix)
            .map_or(text.clone(), str::to_string)
    }

    /// A Parquet or Arrow error reading `path`.
    pub fn parquet(path: &Path, source: impl Into<parquet::errors::ParquetError>) -> ShardsError {
        ShardsError::Parquet {
            path: path.to_path_buf(),
            source: source.into(),
        }
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ShardsError + '_ {
    move |source| ShardsError::Io {
        path: path.to_path_buf(),
        source,
    }
}
