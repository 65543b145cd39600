//! The MMCLIP-rs loader: Parquet shards in, mixed paired/unpaired training
//! batches out, as plain contiguous buffers a trainer wraps as tensors.
//!
//! [`Sources::open`] opens the shard folders that `ingest` wrote (paired
//! MIMIC-style folders and unpaired PadChest-style ones) and checks every
//! shard against its manifest. [`Loader`] iterates [`Batch`]es for one rank:
//! each holds an exact number of paired and unpaired rows
//! ([`LoaderConfig::paired_fraction`]), images as `[B, 3, 224, 224]` f32
//! normalised with CLIP's mean and std, token ids `[B, 77]` with lengths and
//! entity masks, labels and row ids. The order depends only on the seed, the
//! epoch and the global batch size ([`Position`] resumes it exactly); decoding
//! and augmentation ([`AugmentConfig`], [`Mode`]) run on a rayon pool behind
//! bounded channels, prefetching [`LoaderConfig::prefetch`] batches.
//! [`Loader::stats`] gives stage times, queue depths and consumer waiting.
//! Nothing here depends on libtorch.
//!
//! ```no_run
//! use pipeline::{Loader, LoaderConfig, OpenOptions, Position, Sources};
//! # fn main() -> Result<(), pipeline::PipelineError> {
//! let sources = Sources::open(&["shards/mimic".into()], &["shards/padchest".into()], &OpenOptions::default())?;
//! let cfg = LoaderConfig { batch_size: 64, paired_fraction: 0.75, epochs: Some(1), ..Default::default() };
//! for batch in Loader::new(sources, &cfg, Position::default())? {
//!     let batch = batch?;
//!     assert_eq!(batch.images_shape(), [64, 3, 224, 224]);
//!     assert_eq!(batch.paired_rows, 48);
//! }
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod augment;
mod batch;
mod config;
mod error;
mod order;
mod prefetch;
mod source;
mod stats;

pub use augment::{
    AugmentConfig, CHANNELS, CLIP_MEAN, CLIP_STD, IMAGE_FLOATS, IMAGE_SIZE, Mode, render,
};
pub use batch::{Batch, CONTEXT, NUM_LABELS, RowId};
pub use config::{BadRowPolicy, LoaderConfig};
pub use error::{BadRow, PipelineError};
pub use order::Position;
pub use prefetch::{Loader, Message};
/// Label value for "not mentioned" (null in the shard), defined with the
/// shard format; the others are CheXpert's 1 positive, 0 negative, -1
/// uncertain.
pub use schemas::LABEL_MISSING;
pub use source::{OpenOptions, RowLoc, Source, SourceKind, Sources};
pub use stats::LoaderStats;
