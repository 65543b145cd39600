//! Reject records: one line of `rejects.jsonl` per input row that was not written.

use serde::{Deserialize, Serialize};

/// The step of ingest at which a row was rejected. Counts in the manifest are
/// kept per stage, so a reader can see where data was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// A row of a CSV (metadata, split, labels) that could not be parsed.
    Csv,
    /// The image file is missing or unreadable.
    ImageRead,
    /// The image declares a size the policy refuses (a side below
    /// [`crate::ImagePolicy::min_side`], an aspect ratio beyond
    /// [`crate::ImagePolicy::max_aspect`], more pixels than
    /// [`crate::ImagePolicy::max_pixels`]); checked from the header, before
    /// the pixels are decoded.
    ImageSize,
    /// The image bytes could not be decoded (corrupt, truncated, unsupported syntax).
    ImageDecode,
    /// The report file is missing or unreadable.
    Report,
    /// The NER sidecar line does not match the report, or its spans are invalid.
    Entities,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 6] = [
        Stage::Csv,
        Stage::ImageRead,
        Stage::ImageSize,
        Stage::ImageDecode,
        Stage::Report,
        Stage::Entities,
    ];

    /// The snake_case name used in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Csv => "csv",
            Stage::ImageRead => "image_read",
            Stage::ImageSize => "image_size",
            Stage::ImageDecode => "image_decode",
            Stage::Report => "report",
            Stage::Entities => "entities",
        }
    }
}

/// One rejected input row: where it came from and why it was not written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    /// The file at fault (image, report, CSV or sidecar), as given on disk.
    pub path: String,
    /// Subject id, where known.
    pub subject_id: Option<String>,
    /// Study id, where known.
    pub study_id: Option<String>,
    /// Image id, where known.
    pub image_id: Option<String>,
    /// The stage that failed.
    pub stage: Stage,
    /// A sentence a person can act on.
    pub reason: String,
}
