//! Ingest: turns the MIMIC-CXR and PadChest releases into Parquet shards.
//!
//! The stages, each a module:
//! - [`dicom_image`] and [`jpeg12`] decode DICOM pixel data to stored values;
//!   [`window`] turns stored values into 8-bit pixels by the image policy and
//!   resizes them once; [`encode`] stores them in the chosen encoding.
//! - Report text (sections, CLIP cleaning and tokenizer, entities) is the
//!   `text` crate's; [`mimic`] calls it for each report.
//! - [`mimic`] and [`padchest`] read the two pre-training releases as laid
//!   out on disk and plan the rows; [`covidx`], [`nih`], [`chexpert`] and
//!   [`rsna`] read the downstream releases into image-only rows; [`shard`]
//!   writes them as atomic, resumable shards with a manifest and a reject
//!   log (formats in the `schemas` crate).
//! - The statistics report over a shard folder is the `stats` crate's;
//!   the binary's `ingest stats` calls it.
//! - [`merge`] combines the part folders of a partitioned run (`--part I/N`)
//!   into the folder of a whole run.
//!
//! The synthetic world that the demo and the tests ingest is made by the
//! `synth` crate, with the same on-disk formats as the real releases.
#![deny(missing_docs)]

pub mod chexpert;
pub mod covidx;
pub mod csvio;
pub mod dicom_image;
pub mod encode;
pub mod jpeg12;
pub mod merge;
pub mod mimic;
pub mod nih;
pub mod padchest;
pub mod prepare;
pub mod rsna;
pub mod shard;
pub mod window;
