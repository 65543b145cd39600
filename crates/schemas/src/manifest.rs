//! `manifest.json`: what a shard folder holds and how it was made.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::reject::Stage;

/// File name of the manifest inside a shard folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the reject log inside a shard folder.
pub const REJECTS_FILE: &str = "rejects.jsonl";
/// File name of the fingerprint inside a shard folder: gzipped JSON of what
/// made the folder (arguments, tokenizer and sidecar hashes, planned rows,
/// size and modification time of every input file). `ingest` compares it
/// before resuming or reusing the folder and names what changed.
pub const FINGERPRINT_FILE: &str = "fingerprint.json.gz";

/// File name of shard `index`: `shard-00042.parquet`.
pub fn shard_file_name(index: usize) -> String {
    format!("shard-{index:05}.parquet")
}

/// Which release a shard folder was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// MIMIC-CXR or MIMIC-CXR-JPG: images with reports.
    Mimic,
    /// PadChest: images only.
    Padchest,
    /// COVIDx CXR: images only, COVID-19 / pneumonia labels in `finding_labels`.
    Covidx,
    /// NIH ChestX-ray14: images only, its 14 classes in `finding_labels`.
    Nih,
    /// CheXpert: images only, the 14 CheXpert label columns.
    Chexpert,
    /// RSNA Pneumonia Detection Challenge: images only, pneumonia in
    /// `finding_labels`, its boxes in `boxes.jsonl`.
    Rsna,
}

impl Source {
    /// The value written in the `source` column.
    pub fn name(self) -> &'static str {
        match self {
            Source::Mimic => "mimic",
            Source::Padchest => "padchest",
            Source::Covidx => "covidx",
            Source::Nih => "nih",
            Source::Chexpert => "chexpert",
            Source::Rsna => "rsna",
        }
    }
}

/// How stored pixel values become 8 bits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum WindowPolicy {
    /// Parity with the MIMIC-CXR-JPG release: min–max to 8 bits, then
    /// histogram equalisation.
    MimicJpg,
    /// The DICOM VOI transform: WindowCenter/Width (or the VOI LUT); falls
    /// back to min–max when the file carries none.
    Voi,
    /// Clip to the given percentiles of the image's own values, then scale.
    Percentile {
        /// Lower percentile in [0, 100).
        low: f32,
        /// Upper percentile in (low, 100].
        high: f32,
    },
}

/// How the 8-bit image is stored in the `image` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ImageEncoding {
    /// Raw row-major 8-bit pixels (height × width bytes); Parquet's zstd
    /// compresses the column. Fastest for the loader.
    Raw,
    /// A grayscale PNG.
    Png,
    /// A grayscale baseline JPEG at the given quality.
    Jpeg {
        /// 1–100.
        quality: u8,
    },
}

/// Everything that decides the pixels written for an input image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagePolicy {
    /// Short side of the stored image in pixels; the aspect ratio is kept.
    pub short_side: u32,
    /// Apply RescaleSlope/RescaleIntercept before windowing.
    pub rescale: bool,
    /// Invert MONOCHROME1 and PresentationLUTShape INVERSE images so that
    /// bone is bright in every stored image.
    pub invert_monochrome1: bool,
    /// Window for DICOM images.
    pub dicom_window: WindowPolicy,
    /// Window for 16-bit PNG images (PadChest).
    pub png_window: WindowPolicy,
    /// Storage encoding.
    pub encoding: ImageEncoding,
    /// Smallest side, in pixels, of an input image that is written; a smaller
    /// one is rejected rather than scaled up to a flat image. Absent in
    /// manifests written before it existed, which used no limit (read as 1).
    #[serde(default = "no_min_side")]
    pub min_side: u32,
    /// Largest ratio of long to short side of an input image that is written.
    /// Resizing keeps the aspect ratio, so this bounds the stored image (and
    /// its memory) at `short_side² × max_aspect`. Absent in manifests written
    /// before it existed, which used no limit (read as `f32::MAX`: JSON has
    /// no infinity).
    #[serde(default = "no_max_aspect")]
    pub max_aspect: f32,
    /// Most pixels (width × height) of an input image that is decoded: the
    /// decoder's buffer grows with the input, not with the stored size, so
    /// a square image of 65,535² (a few kilobytes of PNG) would take 8 GiB
    /// of 16-bit samples. Absent in manifests written before it existed,
    /// which used no limit (read as `u64::MAX`).
    #[serde(default = "no_max_pixels")]
    pub max_pixels: u64,
}

fn no_min_side() -> u32 {
    1
}

fn no_max_aspect() -> f32 {
    f32::MAX
}

fn no_max_pixels() -> u64 {
    u64::MAX
}

impl Default for ImagePolicy {
    fn default() -> Self {
        ImagePolicy {
            short_side: 256,
            rescale: true,
            invert_monochrome1: true,
            dicom_window: WindowPolicy::MimicJpg,
            png_window: WindowPolicy::Percentile {
                low: 0.5,
                high: 99.5,
            },
            encoding: ImageEncoding::Raw,
            // Real chest radiographs are hundreds of pixels a side or more
            // (the smallest in the shared test data is 237) with aspect
            // ratios up to about 1.6 (1024 x 638); these limits keep every
            // one of them and refuse only thumbnails, strips and damage.
            min_side: 32,
            max_aspect: 4.0,
            // The largest chest radiographs are about 4,300 x 4,300 (18.5
            // megapixels); 64 megapixels keeps every one of them and bounds
            // one decode at 128 MiB of 16-bit samples.
            max_pixels: 64_000_000,
        }
    }
}

impl ImagePolicy {
    /// Why an input image of `width` × `height` pixels is refused, or `None`
    /// when its size is within [`ImagePolicy::min_side`] and
    /// [`ImagePolicy::max_aspect`].
    pub fn refuses_size(&self, width: u32, height: u32) -> Option<String> {
        let (short, long) = (width.min(height), width.max(height));
        if short < self.min_side.max(1) {
            return Some(format!(
                "image is {width}x{height}: its short side is below the minimum of {} px",
                self.min_side.max(1)
            ));
        }
        let aspect = f64::from(long) / f64::from(short);
        if aspect > f64::from(self.max_aspect) {
            return Some(format!(
                "image is {width}x{height}: aspect ratio {aspect:.2} exceeds the maximum of {}",
                self.max_aspect
            ));
        }
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_pixels {
            return Some(format!(
                "image is {width}x{height}: {pixels} pixels exceed the maximum of {}",
                self.max_pixels
            ));
        }
        None
    }
}

/// A file whose content decided the output, by sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Path as given.
    pub path: String,
    /// Hex sha256 of its bytes.
    pub sha256: String,
}

/// Where the entity spans of the reports came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitySourceInfo {
    /// `sidecar` (ScispaCy JSON Lines) or `lexicon` (built-in matcher).
    pub kind: String,
    /// The sidecar file, when one was given.
    pub sidecar: Option<FileDigest>,
}

/// Row counts of a run. Every input row is written, filtered out by choice
/// (view filter), or rejected at one stage: `seen = written + filtered + Σ rejected`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Input rows (images listed by the release's index CSV).
    pub seen: u64,
    /// Rows written to shards.
    pub written: u64,
    /// Rows left out by a filter the user asked for (views).
    pub filtered: u64,
    /// Rows rejected, by stage.
    pub rejected: BTreeMap<Stage, u64>,
}

impl Counts {
    /// Total rejects over all stages.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// True when every seen row is accounted for.
    pub fn reconciles(&self) -> bool {
        self.seen == self.written + self.filtered + self.rejected_total()
    }

    /// Adds another count into this one.
    pub fn add(&mut self, other: &Counts) {
        self.seen += other.seen;
        self.written += other.written;
        self.filtered += other.filtered;
        for (stage, n) in &other.rejected {
            *self.rejected.entry(*stage).or_default() += n;
        }
    }
}

/// One shard of the folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the folder.
    pub file: String,
    /// Rows it holds.
    pub rows: u64,
    /// Hex sha256 of the file.
    pub sha256: String,
}

/// `manifest.json`. Deterministic: no timestamps or host names, so the same
/// input and arguments give a byte-identical manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`crate::SCHEMA_VERSION`] at write time.
    pub schema_version: u32,
    /// Version of the `ingest` tool.
    pub tool_version: String,
    /// The release the rows come from.
    pub source: Source,
    /// The resolved arguments of the run (paths made absolute, so that
    /// `./world` and `world` are the same argument).
    pub arguments: serde_json::Value,
    /// Image policy in force.
    pub image_policy: ImagePolicy,
    /// Tokenizer file, for paired sources.
    pub tokenizer: Option<FileDigest>,
    /// Entity source, for paired sources.
    pub entities: Option<EntitySourceInfo>,
    /// Row counts.
    pub counts: Counts,
    /// The shards, in order.
    pub shards: Vec<ShardEntry>,
    /// Set when the folder is one part of a partitioned run
    /// (`ingest … --part I/N`), to be combined by `ingest merge`. Absent in
    /// whole runs (and in manifests written before partitioned runs existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<PartInfo>,
}

/// Which share of a partitioned run a folder holds, and what plan it is a
/// share of. The planned rows are cut into groups of `rows_per_shard` (group
/// `g` is `shard-g.parquet` in every run); part `index` of `count` writes the
/// contiguous groups `first_group..end_group`, so its shards are the same
/// files, under the same names, as a whole run's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    /// 1-based part number.
    pub index: u32,
    /// Number of parts.
    pub count: u32,
    /// First group (shard index) this part wrote.
    pub first_group: u64,
    /// One past the last group this part wrote.
    pub end_group: u64,
    /// Groups in the whole plan.
    pub total_groups: u64,
    /// Rows of the whole plan.
    pub planned_rows: u64,
    /// sha256 over the whole plan (the same in every part of one run).
    pub plan_sha256: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reconcile_only_when_every_row_is_accounted_for() {
        let mut c = Counts {
            seen: 10,
            written: 6,
            filtered: 1,
            ..Default::default()
        };
        c.rejected.insert(Stage::ImageDecode, 2);
        assert!(!c.reconciles());
        c.rejected.insert(Stage::Report, 1);
        assert!(c.reconciles());
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"image_decode\":2"), "{json}");
    }

    #[test]
    fn size_limits_refuse_thin_strips_and_tiny_images_only() {
        let p = ImagePolicy::default();
        assert_eq!(p.refuses_size(2544, 3056), None);
        assert_eq!(p.refuses_size(1024, 638), None);
        assert_eq!(p.refuses_size(32, 128), None);
        let tiny = p.refuses_size(1, 1).unwrap();
        assert!(tiny.contains("1x1") && tiny.contains("minimum"), "{tiny}");
        let strip = p.refuses_size(2, 65535).unwrap();
        assert!(strip.contains("2x65535"), "{strip}");
        let wide = p.refuses_size(4000, 900).unwrap();
        assert!(wide.contains("aspect ratio 4.44"), "{wide}");
        assert_eq!(p.refuses_size(4280, 4280), None);
        let huge = p.refuses_size(65535, 65535).unwrap();
        assert!(huge.contains("4294836225 pixels exceed"), "{huge}");
    }

    #[test]
    fn an_image_policy_without_size_limits_reads_as_unlimited() {
        let mut json = serde_json::to_value(ImagePolicy::default()).unwrap();
        let obj = json.as_object_mut().unwrap();
        obj.remove("min_side");
        obj.remove("max_aspect");
        obj.remove("max_pixels");
        let old: ImagePolicy = serde_json::from_value(json).unwrap();
        assert_eq!((old.min_side, old.max_aspect), (1, f32::MAX));
        assert_eq!(old.max_pixels, u64::MAX);
        assert_eq!(old.refuses_size(65535, 65535), None);
        assert_eq!(old.refuses_size(1, 1), None);
        assert_eq!(old.refuses_size(2, 65535), None);
        let again = serde_json::to_string(&old).unwrap();
        assert_eq!(serde_json::from_str::<ImagePolicy>(&again).unwrap(), old);
    }

    #[test]
    fn manifest_round_trips_through_json() {
        let m = Manifest {
            schema_version: crate::SCHEMA_VERSION,
            tool_version: "0.1.0".into(),
            source: Source::Padchest,
            arguments: serde_json::json!({"root": "x"}),
            image_policy: ImagePolicy::default(),
            tokenizer: None,
            entities: None,
            counts: Counts::default(),
            shards: vec![ShardEntry {
                file: shard_file_name(3),
                rows: 7,
                sha256: "ab".into(),
            }],
            part: None,
        };
        let text = serde_json::to_string_pretty(&m).unwrap();
        assert!(text.contains("shard-00003.parquet"));
        assert_eq!(serde_json::from_str::<Manifest>(&text).unwrap(), m);
    }
}
