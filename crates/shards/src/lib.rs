//! Shard I/O in one place: every crate that reads or writes the Parquet
//! shards of `schemas` goes through here.
//!
//! - [`read_manifest`]: a folder's `manifest.json`, its schema version checked.
//! - [`open_shard`]: a shard checked against its manifest entry (Parquet
//!   magic, optional sha256, footer, schema version, row count).
//! - [`reader`] and [`Columns`]: projected record batches and their columns,
//!   typed (strings, ints, booleans, lists, labels), each failure naming the
//!   file and column.
//! - [`Row`], [`rows_to_batch`], [`encode_rows`] and [`read_rows`]: whole
//!   rows, for the writer and for tests and tools.
//! - [`decode_image`]: a stored image back to 8-bit pixels, by
//!   [`schemas::ImageEncoding`].
//! - [`write_atomic`], [`sha256_file`]: durable writes and the manifest's hash.
//!
//! ```no_run
//! # fn main() -> Result<(), shards::ShardsError> {
//! let dir = std::path::Path::new("shards/mimic");
//! let manifest = shards::read_manifest(dir)?;
//! for entry in &manifest.shards {
//!     let shard = shards::open_shard(&dir.join(&entry.file), entry, true)?;
//!     println!("{}: {} row groups", entry.file, shard.rg_starts.len() - 1);
//!     let rows = shards::read_rows(&dir.join(&entry.file))?;
//!     assert_eq!(rows.len() as u64, entry.rows);
//! }
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod columns;
mod error;
mod file;
mod image;
mod manifest;
mod open;
mod rows;

pub use columns::{Columns, projection, reader};
pub use error::ShardsError;
pub use file::{
    sha256_file, sha256_hex, temporary_path, verify_sha256, write_atomic, write_atomic_through,
};
pub use image::{DecodeError, decode_image};
pub use manifest::read_manifest;
pub use open::{CheckedShard, open_shard};
pub use rows::{Row, encode_rows, read_rows, rows_to_batch};
