//! The on-disk format of MMCLIP-rs: the one place it is defined.
//!
//! `ingest` writes, and `pipeline` and `stats` read, folders of Parquet shards:
//!
//! ```text
//! out/
//!   shard-00000.parquet   one row per image, columns from [`shard_schema`]
//!   shard-00001.parquet
//!   manifest.json         [`Manifest`]: arguments, image policy, counts, shard sha256s
//!   rejects.jsonl         one [`Reject`] per input row that was not written
//! ```
//!
//! Column names live in [`col`]; nothing else in the workspace spells a column
//! name as a string literal. The 14 CheXpert classes live in [`CHEXPERT_CLASSES`],
//! the downstream releases' findings beside them ([`NIH_CLASSES`],
//! [`COVID19`], [`PNEUMONIA`]); the label values ([`LABEL_POSITIVE`] ...
//! [`LABEL_MISSING`]) and the token context length ([`CONTEXT_LENGTH`]) are
//! defined here once for every crate that reads or writes them.
//! Any change to the columns or their meaning bumps [`SCHEMA_VERSION`].
//!
//! ```
//! let schema = schemas::shard_schema();
//! assert!(schema.field_with_name(schemas::col::IMAGE).is_ok());
//! assert_eq!(schemas::CHEXPERT_CLASSES.len(), 14);
//! ```
#![deny(missing_docs)]

mod manifest;
mod reject;

pub use manifest::{
    Counts, EntitySourceInfo, FINGERPRINT_FILE, FileDigest, ImageEncoding, ImagePolicy,
    MANIFEST_FILE, Manifest, PartInfo, REJECTS_FILE, ShardEntry, Source, WindowPolicy,
    shard_file_name,
};
pub use reject::{Reject, Stage};

use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};

/// Version of the shard format. Readers refuse shards whose manifest names another.
pub const SCHEMA_VERSION: u32 = 1;

/// Key under which the schema version is stored in the Parquet/Arrow metadata.
pub const SCHEMA_VERSION_KEY: &str = "mmclip.schema_version";

/// Column names of a shard, one constant per column.
pub mod col {
    /// The release: `"mimic"`, `"padchest"`, `"covidx"`, `"nih"`, `"chexpert"` or `"rsna"`.
    pub const SOURCE: &str = "source";
    /// Patient id as text (MIMIC `subject_id`, PadChest `PatientID`).
    pub const SUBJECT_ID: &str = "subject_id";
    /// Study id as text (MIMIC `study_id`, PadChest `StudyID`).
    pub const STUDY_ID: &str = "study_id";
    /// Image id (MIMIC `dicom_id`, PadChest `ImageID`).
    pub const IMAGE_ID: &str = "image_id";
    /// `train`, `validate` or `test`.
    pub const SPLIT: &str = "split";
    /// View position as the release spells it (`PA`, `AP`, `LATERAL`, `L`, ...).
    pub const VIEW: &str = "view";
    /// True when the row carries a report (MIMIC), false for image-only rows.
    pub const PAIRED: &str = "paired";
    /// The 8-bit grayscale image, encoded as the manifest's `image_policy.encoding` says.
    pub const IMAGE: &str = "image";
    /// Height of the stored (resized) image in pixels.
    pub const IMAGE_HEIGHT: &str = "image_height";
    /// Width of the stored (resized) image in pixels.
    pub const IMAGE_WIDTH: &str = "image_width";
    /// Rows of the original image.
    pub const ORIG_ROWS: &str = "orig_rows";
    /// Columns of the original image.
    pub const ORIG_COLS: &str = "orig_cols";
    /// Bits stored in the original image (8 for JPEG, 12–16 for DICOM/PNG).
    pub const BITS_STORED: &str = "bits_stored";
    /// Photometric interpretation of the original (`MONOCHROME1`, `MONOCHROME2`, ...).
    pub const PHOTOMETRIC: &str = "photometric";
    /// Full report text as released.
    pub const REPORT: &str = "report";
    /// FINDINGS section.
    pub const FINDINGS: &str = "findings";
    /// IMPRESSION section.
    pub const IMPRESSION: &str = "impression";
    /// Last paragraph, when both FINDINGS and IMPRESSION are missing.
    pub const LAST_PARAGRAPH: &str = "last_paragraph";
    /// COMPARISON section.
    pub const COMPARISON: &str = "comparison";
    /// INDICATION section.
    pub const INDICATION: &str = "indication";
    /// The training text: the configured sections, cleaned and joined. Tokens
    /// and entity spans refer to this text.
    pub const TEXT: &str = "text";
    /// CLIP BPE ids of `text`: start token, ids, end token; at most
    /// [`CONTEXT_LENGTH`](crate::CONTEXT_LENGTH).
    pub const TOKEN_IDS: &str = "token_ids";
    /// True when `text` did not fit in the context and was cut.
    pub const TRUNCATED: &str = "truncated";
    /// Entity spans over `text`: character offsets (Unicode scalar values, as
    /// Python counts them), end exclusive.
    pub const ENTITY_SPANS: &str = "entity_spans";
    /// Per-token flag aligned with `token_ids`: the token overlaps an entity.
    pub const ENTITY_MASK: &str = "entity_mask";
    /// Where the entities came from: `sidecar` or `lexicon`.
    pub const ENTITY_SOURCE: &str = "entity_source";
    /// The release's own label list (PadChest, COVIDx, ChestX-ray14); empty
    /// for MIMIC and CheXpert rows, whose labels are the CheXpert columns.
    pub const FINDING_LABELS: &str = "finding_labels";
    /// Span struct field: start character offset.
    pub const SPAN_START: &str = "start";
    /// Span struct field: end character offset (exclusive).
    pub const SPAN_END: &str = "end";
    /// Span struct field: entity label (`ENTITY`, `DISEASE`, ...).
    pub const SPAN_LABEL: &str = "label";
}

/// One medical entity in the `text` column: character offsets (Unicode
/// scalar values, as Python counts them), end exclusive, and the NER label.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EntitySpan {
    /// First character.
    pub start: usize,
    /// One past the last character.
    pub end: usize,
    /// `ENTITY` (ScispaCy `en_core_sci_*` and the built-in lexicon), `DISEASE`, ...
    pub label: String,
}

/// The 14 CheXpert classes: the release's column name and the shard column
/// name. One table, used by ingest, stats and evaluation.
pub const CHEXPERT_CLASSES: [(&str, &str); 14] = [
    ("Atelectasis", "atelectasis"),
    ("Cardiomegaly", "cardiomegaly"),
    ("Consolidation", "consolidation"),
    ("Edema", "edema"),
    ("Enlarged Cardiomediastinum", "enlarged_cardiomediastinum"),
    ("Fracture", "fracture"),
    ("Lung Lesion", "lung_lesion"),
    ("Lung Opacity", "lung_opacity"),
    ("No Finding", "no_finding"),
    ("Pleural Effusion", "pleural_effusion"),
    ("Pleural Other", "pleural_other"),
    ("Pneumonia", "pneumonia"),
    ("Pneumothorax", "pneumothorax"),
    ("Support Devices", "support_devices"),
];

/// The 14 ChestX-ray14 (NIH) classes, as the release's `Finding Labels`
/// spells them and as `ingest nih` writes them into `finding_labels`.
pub const NIH_CLASSES: [&str; 14] = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
];

/// The `finding_labels` entry of a COVID-19 image (`ingest covidx`).
pub const COVID19: &str = "COVID-19";

/// The `finding_labels` entry of a pneumonia image: RSNA's `Target` 1
/// (`ingest rsna`) and COVIDx's non-COVID pneumonia (`ingest covidx`).
pub const PNEUMONIA: &str = "pneumonia";

/// Label value: the class is present (CheXpert's 1).
pub const LABEL_POSITIVE: i8 = 1;
/// Label value: the class is absent (CheXpert's 0).
pub const LABEL_NEGATIVE: i8 = 0;
/// Label value: the report is uncertain about the class (CheXpert's -1).
pub const LABEL_UNCERTAIN: i8 = -1;
/// Label value: the report does not mention the class. Null in the shard's
/// label columns; this value where a label is held in an `i8` (the loader's
/// batches, evaluation).
pub const LABEL_MISSING: i8 = i8::MIN;

/// CLIP's text context length: the most token ids a `token_ids` cell holds
/// (start and end tokens included), and the width of a batch's token rows.
pub const CONTEXT_LENGTH: usize = 77;

/// The five CheXpert competition classes (Irvin et al., 2019), which the
/// paper's "CheXpert 5" rows score: names as in [`CHEXPERT_CLASSES`].
pub const CHEXPERT_COMPETITION: [&str; 5] = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
];

/// Shard column name of a CheXpert label, e.g. `label_pleural_effusion`.
pub fn label_column(class_index: usize) -> String {
    format!("label_{}", CHEXPERT_CLASSES[class_index].1)
}

/// The struct type of one entity span.
pub fn span_fields() -> Fields {
    Fields::from(vec![
        Field::new(col::SPAN_START, DataType::Int32, false),
        Field::new(col::SPAN_END, DataType::Int32, false),
        Field::new(col::SPAN_LABEL, DataType::Utf8, false),
    ])
}

/// The Arrow schema of every shard. Label columns are Int8: 1 positive,
/// 0 negative, -1 uncertain, null not mentioned (CheXpert convention).
pub fn shard_schema() -> SchemaRef {
    use DataType::*;
    let text = |name: &str| Field::new(name, Utf8, true);
    let mut fields = vec![
        Field::new(col::SOURCE, Utf8, false),
        Field::new(col::SUBJECT_ID, Utf8, false),
        Field::new(col::STUDY_ID, Utf8, false),
        Field::new(col::IMAGE_ID, Utf8, false),
        Field::new(col::SPLIT, Utf8, false),
        Field::new(col::VIEW, Utf8, false),
        Field::new(col::PAIRED, Boolean, false),
        Field::new(col::IMAGE, Binary, false),
        Field::new(col::IMAGE_HEIGHT, Int32, false),
        Field::new(col::IMAGE_WIDTH, Int32, false),
        Field::new(col::ORIG_ROWS, Int32, false),
        Field::new(col::ORIG_COLS, Int32, false),
        Field::new(col::BITS_STORED, Int32, false),
        Field::new(col::PHOTOMETRIC, Utf8, false),
        text(col::REPORT),
        text(col::FINDINGS),
        text(col::IMPRESSION),
        text(col::LAST_PARAGRAPH),
        text(col::COMPARISON),
        text(col::INDICATION),
        text(col::TEXT),
        Field::new(
            col::TOKEN_IDS,
            List(Arc::new(Field::new("item", Int32, false))),
            true,
        ),
        Field::new(col::TRUNCATED, Boolean, true),
        Field::new(
            col::ENTITY_SPANS,
            List(Arc::new(Field::new("item", Struct(span_fields()), false))),
            true,
        ),
        Field::new(
            col::ENTITY_MASK,
            List(Arc::new(Field::new("item", Boolean, false))),
            true,
        ),
        text(col::ENTITY_SOURCE),
    ];
    fields.extend((0..CHEXPERT_CLASSES.len()).map(|i| Field::new(label_column(i), Int8, true)));
    fields.push(Field::new(
        col::FINDING_LABELS,
        List(Arc::new(Field::new("item", Utf8, false))),
        false,
    ));
    let metadata: std::collections::HashMap<String, String> =
        [(SCHEMA_VERSION_KEY.to_string(), SCHEMA_VERSION.to_string())].into();
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_competition_classes_are_chexpert_classes() {
        for name in CHEXPERT_COMPETITION {
            assert!(
                CHEXPERT_CLASSES.iter().any(|(c, _)| *c == name),
                "{name} is not a CheXpert class"
            );
        }
    }

    #[test]
    fn schema_has_one_label_column_per_class_and_unique_names() {
        let schema = shard_schema();
        let mut names: Vec<_> = schema.fields().iter().map(|f| f.name().clone()).collect();
        for i in 0..CHEXPERT_CLASSES.len() {
            assert!(names.contains(&label_column(i)));
        }
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate column names");
        assert_eq!(
            schema
                .metadata()
                .get(SCHEMA_VERSION_KEY)
                .map(String::as_str),
            Some("1")
        );
    }
}
