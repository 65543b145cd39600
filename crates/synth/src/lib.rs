//! A seeded synthetic chest-X-ray world in the on-disk formats of MIMIC-CXR
//! and PadChest.
//!
//! The real releases are credentialed and never available to the project,
//! so the demo, the tests and the benchmarks ingest this world instead. It is
//! laid out exactly as the releases are (tree, ids, CSV columns, report
//! layout, DICOM attributes, 16-bit PNGs), and it knows its own truth: each
//! study's findings drive the CheXpert labels, the report sentences and the
//! lesions drawn into the images, so a model trained on it has something real
//! to learn and a test can check that labels, text and pixels agree.
//!
//! [`generate`] writes, under one output folder:
//! - `mimic-cxr/` (and `mimic-cxr-jpg/` with [`MimicFormat::Both`]): images,
//!   reports, the four index CSVs (gzip), and `ner_sidecar.jsonl`;
//! - `padchest/`: the labels CSV (gzip) and 16-bit PNGs;
//! - with [`SynthConfig::chexpert_images`], [`SynthConfig::nih_images`],
//!   [`SynthConfig::covidx_images`] and [`SynthConfig::rsna_images`]:
//!   `chexpert/`, `nih/`, `covidx/` and `rsna/`, trees laid out as the
//!   CheXpert-v1.0-small, ChestX-ray14, COVIDx and RSNA Pneumonia Detection
//!   Challenge releases, labelled (and for RSNA boxed) from the lesions
//!   drawn into their images (the rules are in the `downstream` module),
//!   each with its own `lesions.jsonl`;
//! - `lesions.jsonl` (one line per image: what was drawn where),
//!   `faults.json` (with [`SynthConfig::faults`]) and `world.json` (the
//!   arguments and counts, also returned as [`Summary`]).
//!
//! Output is byte-identical for identical arguments: every study and every
//! PadChest patient has its own ChaCha8 stream derived from the seed, so the
//! parallel (rayon) generation order does not matter.
//!
//! ```no_run
//! let cfg = synth::SynthConfig { studies: 20, padchest_images: 10, size: 128, ..Default::default() };
//! let summary = synth::generate(std::path::Path::new("/tmp/world"), &cfg)?;
//! assert_eq!(summary.mimic.studies, 20);
//! # Ok::<(), synth::SynthError>(())
//! ```
#![deny(missing_docs)]

mod dicom_out;
mod downstream;
mod faults;
mod findings;
mod mimic;
mod out;
mod padchest;
mod render;
mod text;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use dicom_out::Syntax;

/// Which image files the MIMIC-CXR part holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MimicFormat {
    /// DICOM files, as MIMIC-CXR.
    Dicom,
    /// 8-bit JPEGs, as MIMIC-CXR-JPG.
    Jpg,
    /// Both: `mimic-cxr/` with DICOMs and `mimic-cxr-jpg/` with JPEGs of
    /// the same images under the same ids.
    Both,
}

/// What to generate. `Default` gives the CLI defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SynthConfig {
    /// Number of MIMIC-CXR studies.
    pub studies: usize,
    /// Number of PadChest images.
    pub padchest_images: usize,
    /// Seed of everything; equal seeds give byte-identical worlds.
    pub seed: u64,
    /// Image height in pixels (widths vary a little below it, as real
    /// detector formats do). Real images are 2000–3000 px; keep this small
    /// for tests and large for ingest benchmarks.
    pub size: u32,
    /// Which MIMIC image files to write.
    pub mimic_format: MimicFormat,
    /// Inject bad inputs that ingest must reject, listed in `faults.json`.
    pub faults: bool,
    /// Images of the CheXpert tree (`chexpert/`); 0 writes none. Left out of
    /// world.json when 0, so worlds without the tree keep their bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chexpert_images: usize,
    /// Images of the ChestX-ray14 tree (`nih/`); 0 writes none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nih_images: usize,
    /// Images of the COVIDx tree (`covidx/`); 0 writes none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub covidx_images: usize,
    /// Patients (one image each) of the RSNA Pneumonia tree (`rsna/`); 0
    /// writes none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rsna_images: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            studies: 300,
            padchest_images: 300,
            seed: 0,
            size: 512,
            mimic_format: MimicFormat::Dicom,
            faults: false,
            chexpert_images: 0,
            nih_images: 0,
            covidx_images: 0,
            rsna_images: 0,
        }
    }
}

/// Why generation failed. Each variant names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The configuration cannot produce a world.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The output folder holds something that is not a synthetic world;
    /// generation refuses to write into it rather than mix or delete files.
    #[error("{0} is not empty and holds no world.json; refusing to write into it")]
    NotAWorld(PathBuf),
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An image could not be encoded.
    #[error("{path}: cannot encode image: {message}")]
    Encode {
        /// The file being written.
        path: PathBuf,
        /// What the encoder said.
        message: String,
    },
}

impl SynthError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> SynthError {
        SynthError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Counts of the MIMIC-CXR part.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MimicCounts {
    /// Subjects.
    pub subjects: usize,
    /// Studies.
    pub studies: usize,
    /// Images (rows of the metadata CSV that have a file).
    pub images: usize,
    /// Studies per split.
    pub studies_per_split: BTreeMap<String, usize>,
    /// Images per split.
    pub images_per_split: BTreeMap<String, usize>,
    /// Images per ViewPosition (empty ViewPosition as `""`).
    pub images_per_view: BTreeMap<String, usize>,
    /// DICOM files per transfer syntax UID.
    pub dicom_per_transfer_syntax: BTreeMap<String, usize>,
    /// DICOM files per photometric interpretation.
    pub dicom_per_photometric: BTreeMap<String, usize>,
    /// Reports per layout (findings+impression, impression-only, ...).
    pub reports_per_layout: BTreeMap<String, usize>,
    /// Per CheXpert class: studies labelled 1.0, 0.0, -1.0.
    pub labels: BTreeMap<String, LabelCounts>,
    /// Per split and CheXpert class: studies labelled 1.0.
    pub positives_per_split: BTreeMap<String, BTreeMap<String, usize>>,
    /// Lines in the NER sidecar (studies with a training text).
    pub sidecar_lines: usize,
}

/// How often a class carries each label value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LabelCounts {
    /// 1.0
    pub positive: usize,
    /// 0.0
    pub negative: usize,
    /// -1.0
    pub uncertain: usize,
    /// Share of studies labelled 1.0.
    pub prevalence: f64,
}

/// Counts of the PadChest part.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PadchestCounts {
    /// Patients.
    pub patients: usize,
    /// Studies.
    pub studies: usize,
    /// Images (rows of the CSV).
    pub images: usize,
    /// Images per Projection.
    pub images_per_projection: BTreeMap<String, usize>,
    /// Images per BitsStored.
    pub images_per_bits_stored: BTreeMap<String, usize>,
    /// Images per label (a row counts once per label it carries).
    pub labels: BTreeMap<String, usize>,
}

/// Counts of one downstream tree (CheXpert, NIH, COVIDx or RSNA).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TreeCounts {
    /// The tree's folder, relative to the output folder: the `--root` its
    /// `ingest` subcommand reads.
    pub root: String,
    /// Patients.
    pub patients: usize,
    /// Images (rows of its label files).
    pub images: usize,
    /// Images per split, in the release's names (`train`/`valid`/`test`,
    /// `train_val`/`test`, `train`/`val`/`test`, `train` for RSNA).
    pub images_per_split: BTreeMap<String, usize>,
    /// Images per view (`AP`, `PA`, `Lateral`, `Frontal`).
    pub images_per_view: BTreeMap<String, usize>,
    /// Images per label in the release's vocabulary: CheXpert cells of 1,
    /// NIH classes and `No Finding`, COVIDx `positive` and `negative`,
    /// RSNA's detailed classes (`Lung Opacity` for `Target` 1).
    pub labels: BTreeMap<String, usize>,
    /// CheXpert label cells of -1.0.
    pub uncertain_cells: usize,
    /// CheXpert label cells left blank.
    pub blank_cells: usize,
    /// Lines of the tree's own lesions.jsonl (one per image).
    pub lesion_lines: usize,
    /// RSNA boxes (`Target` 1 lines of the labels file); left out of
    /// world.json when 0, so the other trees' counts keep their bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub boxes: usize,
}

/// The downstream trees written; `None` for a tree not asked for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DownstreamCounts {
    /// The CheXpert tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chexpert: Option<TreeCounts>,
    /// The ChestX-ray14 tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nih: Option<TreeCounts>,
    /// The COVIDx tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covidx: Option<TreeCounts>,
    /// The RSNA Pneumonia tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsna: Option<TreeCounts>,
}

impl DownstreamCounts {
    /// No tree was written.
    pub fn is_empty(&self) -> bool {
        self.chexpert.is_none()
            && self.nih.is_none()
            && self.covidx.is_none()
            && self.rsna.is_none()
    }
}

/// One injected fault, as listed in `faults.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fault {
    /// What is wrong (`truncated_dicom`, `garbage_pixel_data`, ...).
    pub kind: String,
    /// The file that carries the fault, relative to the output folder.
    pub path: String,
    /// The ids it concerns (`dicom_id`, `study_id`, `subject_id`, `ImageID`, ...).
    pub ids: BTreeMap<String, String>,
}

/// What was generated: written as `world.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// The arguments.
    pub config: SynthConfig,
    /// Version of this generator's output conventions.
    pub generator: String,
    /// The MIMIC-CXR part.
    pub mimic: MimicCounts,
    /// The PadChest part.
    pub padchest: PadchestCounts,
    /// The downstream trees; left out of world.json when none was asked for.
    #[serde(default, skip_serializing_if = "DownstreamCounts::is_empty")]
    pub downstream: DownstreamCounts,
    /// Lines in lesions.jsonl (one per image of MIMIC and PadChest; the
    /// downstream trees keep their own).
    pub lesion_lines: usize,
    /// Lesion boxes per CheXpert class.
    pub lesions_per_class: BTreeMap<String, usize>,
    /// Injected faults (also in faults.json).
    pub faults: Vec<Fault>,
    /// Conventions a reader should know, in words.
    pub notes: Vec<String>,
}

/// Names of the files written at the top of the output folder.
pub mod files {
    /// The summary.
    pub const WORLD: &str = "world.json";
    /// One line per image with its lesions.
    pub const LESIONS: &str = "lesions.jsonl";
    /// The injected faults.
    pub const FAULTS: &str = "faults.json";
    /// The MIMIC-CXR root (DICOM, or JPEG with `--mimic-format jpg`).
    pub const MIMIC: &str = "mimic-cxr";
    /// The MIMIC-CXR-JPG root with `--mimic-format both`.
    pub const MIMIC_JPG: &str = "mimic-cxr-jpg";
    /// The PadChest root.
    pub const PADCHEST: &str = "padchest";
    /// The NER sidecar, inside each MIMIC root.
    pub const SIDECAR: &str = "ner_sidecar.jsonl";
    /// The CheXpert tree (holding `CheXpert-v1.0-small/`).
    pub const CHEXPERT: &str = "chexpert";
    /// The ChestX-ray14 tree.
    pub const NIH: &str = "nih";
    /// The COVIDx tree.
    pub const COVIDX: &str = "covidx";
    /// The RSNA Pneumonia Detection Challenge tree.
    pub const RSNA: &str = "rsna";
    /// The PadChest labels CSV, inside the PadChest root.
    pub const PADCHEST_CSV: &str = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz";
}

/// Writes a synthetic world under `out` and returns its summary.
///
/// `out` must be missing, empty, or a previous world (holding `world.json`);
/// in the last case the previous world's files are removed first, so a
/// smaller world never inherits stale files.
pub fn generate(out: &Path, cfg: &SynthConfig) -> Result<Summary, SynthError> {
    if cfg.size < 64 || cfg.size > 8192 {
        return Err(SynthError::Config(format!(
            "size {} outside 64..=8192",
            cfg.size
        )));
    }
    if cfg.studies == 0
        && cfg.padchest_images == 0
        && cfg.chexpert_images == 0
        && cfg.nih_images == 0
        && cfg.covidx_images == 0
        && cfg.rsna_images == 0
    {
        return Err(SynthError::Config("nothing to generate".into()));
    }
    prepare_out(out)?;

    let mimic = mimic::generate(out, cfg)?;
    let pad = padchest::generate(out, cfg)?;
    let downstream = downstream::generate(out, cfg)?;

    let mut lesion_lines = mimic.lesion_lines.clone();
    lesion_lines.extend(pad.lesion_lines.iter().cloned());
    let mut lesions_per_class = BTreeMap::new();
    for l in &lesion_lines {
        for c in &l.lesions {
            *lesions_per_class.entry(c.class.clone()).or_insert(0) += 1;
        }
    }
    let mut buf = String::new();
    for l in &lesion_lines {
        buf.push_str(&serde_json::to_string(l).map_err(|e| SynthError::io(out, e.into()))?);
        buf.push('\n');
    }
    out::write(&out.join(files::LESIONS), buf.as_bytes())?;

    let mut faults = Vec::new();
    if cfg.faults {
        faults = faults::inject(out, cfg, &mimic, &pad)?;
        let json =
            serde_json::to_string_pretty(&faults).map_err(|e| SynthError::io(out, e.into()))?;
        out::write(&out.join(files::FAULTS), json.as_bytes())?;
    }

    let mut notes: Vec<String> = vec![
            "MIMIC-CXR-JPG images are min-max scaled to 8 bits (after undoing MONOCHROME1); the real release also equalised histograms".into(),
            "JPEG baseline DICOMs hold 8-bit samples (BitsStored 8); all others 12 bits stored in 16 allocated".into(),
            "PadChest ImageID includes the .png extension, as in the real CSV; files lie at <ImageDir>/<ImageID>".into(),
            "PadChest PNGs store MONOCHROME2 values (bright = dense); labelCUIS codes are plausible, not checked against UMLS".into(),
            "lesions.jsonl boxes are [x0, y0, x1, y1] in pixels of the written image, x1/y1 exclusive, measured from the pixels the lesion changed".into(),
            "negbio CSV equals the chexpert CSV except that a few uncertain labels are left empty, as NegBio tends to".into(),
        ];
    let d = &downstream;
    if d.chexpert.is_some() || d.nih.is_some() || d.covidx.is_some() {
        notes.extend([
            "chexpert/, nih/ and covidx/ each hold a lesions.jsonl whose lesions carry the label they give in that release (null: drawn, not labelled)".to_string(),
            "CheXpert train.csv labels are the study's mentions (1.0 drawn, -1.0 drawn faint, 0.0 negated, blank unmentioned); valid.csv and test_labels.csv are 1 where drawn at all, else 0".into(),
            "NIH Finding Labels list the classes whose lesions visibly changed pixels (Lung Lesion: Nodule when small, Mass when large); Emphysema, Fibrosis and Hernia are never drawn".into(),
            "COVIDx labels are positive when a pneumonia or consolidation opacity is visibly drawn, else negative".into(),
        ]);
    }
    if d.rsna.is_some() {
        notes.extend([
            "rsna/ holds a lesions.jsonl whose pneumonia and consolidation lesions carry the label Lung Opacity (null: drawn, not labelled)".to_string(),
            "RSNA Target is 1 when a pneumonia or consolidation opacity is visibly drawn, with one labels line per such opacity whose box is its lesions.jsonl bbox as x0, y0, x1 - x0, y1 - y0; the class file says Normal only when nothing at all is drawn".into(),
            "RSNA DICOMs are 8-bit MONOCHROME2 in JPEG baseline, as released; generic lung opacities are not drawn there".into(),
        ]);
    }
    let summary = Summary {
        config: cfg.clone(),
        generator: "synth 1".into(),
        mimic: mimic.counts.clone(),
        padchest: pad.counts.clone(),
        downstream,
        lesion_lines: lesion_lines.len(),
        lesions_per_class,
        faults,
        notes,
    };
    let json = serde_json::to_string_pretty(&summary).map_err(|e| SynthError::io(out, e.into()))?;
    out::write(&out.join(files::WORLD), json.as_bytes())?;
    Ok(summary)
}

fn prepare_out(out: &Path) -> Result<(), SynthError> {
    if out.exists() {
        let mut entries = std::fs::read_dir(out).map_err(|e| SynthError::io(out, e))?;
        let empty = entries.next().is_none();
        if !empty {
            if !out.join(files::WORLD).is_file() {
                return Err(SynthError::NotAWorld(out.to_path_buf()));
            }
            for name in [
                files::MIMIC,
                files::MIMIC_JPG,
                files::PADCHEST,
                files::CHEXPERT,
                files::NIH,
                files::COVIDX,
                files::RSNA,
            ] {
                let p = out.join(name);
                if p.exists() {
                    std::fs::remove_dir_all(&p).map_err(|e| SynthError::io(&p, e))?;
                }
            }
            for name in [files::LESIONS, files::FAULTS, files::WORLD] {
                let p = out.join(name);
                if p.exists() {
                    std::fs::remove_file(&p).map_err(|e| SynthError::io(&p, e))?;
                }
            }
        }
    }
    std::fs::create_dir_all(out).map_err(|e| SynthError::io(out, e))
}
