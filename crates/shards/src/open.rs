//! Opening one shard checked against its manifest entry.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use schemas::{SCHEMA_VERSION, SCHEMA_VERSION_KEY, ShardEntry};
use sha2::{Digest, Sha256};

use crate::ShardsError;
use crate::error::io_err;

/// A shard that passed [`open_shard`]'s checks, with its footer read.
#[derive(Debug)]
pub struct CheckedShard {
    /// The file.
    pub path: PathBuf,
    /// The open file (positioned anywhere; readers seek).
    pub file: File,
    /// Footer and Arrow schema, for readers built without parsing them again.
    pub meta: ArrowReaderMetadata,
    /// First row of each row group, then the total: `rg_starts[i]..rg_starts[i+1]`.
    pub rg_starts: Vec<u32>,
}

impl CheckedShard {
    /// Rows in the shard.
    pub fn rows(&self) -> u64 {
        self.meta.metadata().file_metadata().num_rows() as u64
    }
}

/// Opens the shard at `path` and checks it against its manifest `entry`:
/// present, ends with the Parquet magic (else [`ShardsError::Truncated`]),
/// sha256 equal to the entry's when `verify_sha256`, footer readable,
/// schema version this build's, and as many rows as the entry lists.
pub fn open_shard(
    path: &Path,
    entry: &ShardEntry,
    verify_sha256: bool,
) -> Result<CheckedShard, ShardsError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ShardsError::MissingShard {
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(ShardsError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    // A shard cut short loses its footer and the closing magic with it; say
    // "truncated" rather than pass on the Parquet reader's EOF message.
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut magic = [0u8; 4];
    if len < 12
        || file.seek(SeekFrom::End(-4)).is_err()
        || file.read_exact(&mut magic).is_err()
        || &magic != b"PAR1"
    {
        return Err(ShardsError::Truncated {
            path: path.to_path_buf(),
            len,
        });
    }
    if verify_sha256 {
        file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(io_err(path))?;
        let sha = hex::encode(hasher.finalize());
        if sha != entry.sha256 {
            return Err(ShardsError::ShaMismatch {
                path: path.to_path_buf(),
                manifest: entry.sha256.clone(),
                file: sha,
            });
        }
    }
    let meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(|e| {
        ShardsError::BadFooter {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })?;
    let version = meta
        .schema()
        .metadata()
        .get(SCHEMA_VERSION_KEY)
        .cloned()
        .unwrap_or_else(|| "none".into());
    if version != SCHEMA_VERSION.to_string() {
        return Err(ShardsError::SchemaVersion {
            path: path.to_path_buf(),
            found: version,
            expected: SCHEMA_VERSION,
        });
    }
    let file_rows = meta.metadata().file_metadata().num_rows() as u64;
    if file_rows != entry.rows {
        return Err(ShardsError::RowCountMismatch {
            path: path.to_path_buf(),
            manifest: entry.rows,
            file: file_rows,
        });
    }
    let mut rg_starts = vec![0u32];
    for rg in meta.metadata().row_groups() {
        rg_starts.push(rg_starts.last().copied().unwrap_or(0) + rg.num_rows() as u32);
    }
    Ok(CheckedShard {
        path: path.to_path_buf(),
        file,
        meta,
        rg_starts,
    })
}
