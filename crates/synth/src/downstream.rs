//! The downstream releases: CheXpert, ChestX-ray14 (NIH), COVIDx and RSNA
//! Pneumonia trees drawn by the same phantom, laid out exactly as `ingest
//! chexpert`, `ingest nih`, `ingest covidx` and `ingest rsna` read the real
//! ones.
//!
//! Each tree has its own master stream (the seed XOR a per-tree constant) and
//! every patient its own stream drawn from it, so adding a tree changes no
//! byte of the MIMIC and PadChest parts, and the parallel writing order does
//! not matter. Findings come from [`findings::draw_findings`], the MIMIC
//! part's draw; the labels are derived from them by the rules below, and each
//! tree's `lesions.jsonl` lists every lesion with the label it gives, so a
//! test can check labels against what was drawn.
//!
//! Label rules:
//! - CheXpert (per study, all views of a study share the row): `train.csv`
//!   as the CheXpert labeler writes it, [`findings::chexpert_row`]: 1.0 for a
//!   positive mention (drawn at full strength), -1.0 for an uncertain one
//!   (drawn faint), 0.0 for a negated one (not drawn), blank when
//!   unmentioned. `valid.csv` and `test_labels.csv` are read off the images,
//!   as the released radiologist labels are: 1 where the finding is drawn at
//!   all (positive or uncertain), else 0, never blank.
//! - NIH (per image): only positive findings are drawn, and a class is
//!   listed when its lesion visibly changed pixels: Atelectasis, Cardiomegaly,
//!   Consolidation, Edema, Effusion (Pleural Effusion), Infiltration (Lung
//!   Opacity), Nodule or Mass (Lung Lesion, by the drawn size),
//!   Pleural_Thickening (Pleural Other), Pneumonia, Pneumothorax. Findings
//!   without an NIH class (Enlarged Cardiomediastinum, Fracture) are not
//!   drawn; tubes are drawn and never listed (NIH labels no devices);
//!   Emphysema, Fibrosis and Hernia are never drawn, so never listed. An image
//!   with nothing listed is `No Finding`.
//! - COVIDx (per image; a patient is positive or negative as a whole):
//!   `positive` when a pneumonia or consolidation opacity is visibly drawn,
//!   else `negative`. Positive patients get one or two such opacities; the
//!   other findings (effusion, cardiomegaly, ...) are drawn in both.
//! - RSNA Pneumonia (per patient, one image each): `Target` 1 when a
//!   pneumonia or consolidation opacity is visibly drawn (the COVIDx rule),
//!   with one line of `stage_2_train_labels.csv` per drawn opacity carrying
//!   its box, else one `Target` 0 line with empty box fields. Positive
//!   patients get one to three opacities, each in its own lung zone. The
//!   class file has a line per labels line: `Lung Opacity` for `Target` 1,
//!   `Normal` when nothing at all is drawn, else
//!   `No Lung Opacity / Not Normal`. Generic lung opacities (CheXpert's
//!   `Lung Opacity`) are not drawn: the release's annotators boxed every
//!   pneumonia-like opacity, so an unboxed one would contradict the labels.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use schemas::CHEXPERT_CLASSES;
use serde::Serialize;

use crate::dicom_out::{self, DicomHeader, Syntax};
use crate::findings::{self, Certainty, Finding, class};
use crate::out;
use crate::render::{self, Anatomy, View};
use crate::{DownstreamCounts, SynthConfig, SynthError, TreeCounts, files};

/// The CheXpert dataset folder, inside [`files::CHEXPERT`].
pub(crate) const CHEXPERT_DATASET: &str = "CheXpert-v1.0-small";
/// The NIH index CSV (the 2020 revision: no trailing empty column).
pub(crate) const NIH_CSV: &str = "Data_Entry_2017_v2020.csv";
/// The NIH header as released: the last two names hold commas and are not
/// quoted, so the header and every row have 11 fields.
const NIH_HEADER: &str = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]";
/// CheXpert-v1.0's first patient numbers of the validation and test sets.
const CHEXPERT_VALID_FROM: u32 = 64_541;
const CHEXPERT_TEST_FROM: u32 = 64_741;
/// COVIDx sources, as its label files name them.
const COVIDX_SOURCES: [&str; 7] = ["cohen", "actmed", "fig1", "sirm", "ricord", "rsna", "bimcv"];
/// The RSNA labels file, its detailed class file and its DICOM folder.
const RSNA_LABELS: &str = "stage_2_train_labels.csv";
const RSNA_CLASS_INFO: &str = "stage_2_detailed_class_info.csv";
const RSNA_IMAGES_DIR: &str = "stage_2_train_images";
/// The detailed class of a `Target` 1 patient.
const LUNG_OPACITY: &str = "Lung Opacity";
/// The detailed classes of a `Target` 0 patient: nothing drawn, something.
const RSNA_NORMAL: &str = "Normal";
const RSNA_NOT_NORMAL: &str = "No Lung Opacity / Not Normal";

/// One lesion of a downstream image and the label it gives in the tree's
/// vocabulary (`None`: drawn but not labelled, as tubes in NIH and COVIDx).
#[derive(Debug, Clone, Serialize)]
struct TreeLesion {
    /// The CheXpert class it illustrates (the renderer's vocabulary).
    class: &'static str,
    /// The release's label it gives.
    label: Option<String>,
    bbox: [u32; 4],
    certainty: &'static str,
}

/// One line of a tree's lesions.jsonl.
#[derive(Debug, Clone, Serialize)]
struct TreeLesionLine {
    source: &'static str,
    image_id: String,
    /// The image file, relative to the output folder.
    path: String,
    width: u32,
    height: u32,
    lesions: Vec<TreeLesion>,
}

/// An 8-bit drawn image with its visible lesions (those whose box is not
/// empty), as (CheXpert class index, certainty, box).
struct Drawn {
    pixels: Vec<u8>,
    visible: Vec<(usize, Certainty, [u32; 4])>,
}

/// Draws the findings on an 8-bit image, windowed as an 8-bit release is:
/// a little head-room at both ends, the lead marker saturated.
fn draw(findings: &[Finding], anat: &Anatomy, view: View, w: u32, h: u32, seed: u64) -> Drawn {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let lesions = findings::lesions_for(findings, anat, view, &mut rng);
    let r = render::render(anat, view, &lesions, w as usize, h as usize, seed);
    let offset = rng.random_range(4.0..14.0f32);
    let span = rng.random_range(215.0..238.0f32);
    let pixels = out::to_stored(&r.density, offset, span, 8)
        .into_iter()
        .map(|v| v as u8)
        .collect();
    let visible = lesions
        .iter()
        .zip(&r.boxes)
        .filter_map(|(l, b)| {
            let c = if l.amp < 1.0 {
                Certainty::Uncertain
            } else {
                Certainty::Positive
            };
            b.map(|b| (l.class, c, b))
        })
        .collect();
    Drawn { pixels, visible }
}

/// The image file formats the trees use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Codec {
    Png,
    Jpeg,
}

impl Codec {
    fn ext(self) -> &'static str {
        match self {
            Codec::Png => "png",
            Codec::Jpeg => "jpg",
        }
    }
}

/// Encodes an 8-bit gray image and writes it.
fn write_image(path: &Path, px: &[u8], w: u32, h: u32, codec: Codec) -> Result<(), SynthError> {
    let mut buf = Vec::new();
    let res = match codec {
        Codec::Png => image::ImageEncoder::write_image(
            image::codecs::png::PngEncoder::new_with_quality(
                &mut buf,
                image::codecs::png::CompressionType::Fast,
                image::codecs::png::FilterType::Adaptive,
            ),
            px,
            w,
            h,
            image::ExtendedColorType::L8,
        ),
        Codec::Jpeg => image::ImageEncoder::write_image(
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 92),
            px,
            w,
            h,
            image::ExtendedColorType::L8,
        ),
    };
    res.map_err(|e| SynthError::Encode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    out::write(path, &buf)
}

/// A portrait width a little below the height, even, as detector formats are.
fn width_for(rng: &mut ChaCha8Rng, h: u32, lo: f32) -> u32 {
    (((h as f32 * rng.random_range(lo..1.0f32)) as u32) & !1).max(32)
}

/// Deals `n` patients to splits: the first quota to the first split named,
/// and so on, over a shuffled order; the rest to `rest`. Each quota is its
/// share of `n` rounded up, at least one when there are patients enough for
/// every split to have one.
fn deal<'a>(
    n: usize,
    quotas: &[(&'a str, f64)],
    rest: &'a str,
    rng: &mut ChaCha8Rng,
) -> Vec<&'a str> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let mut out = vec![rest; n];
    let mut k = 0;
    if n > quotas.len() {
        for (name, share) in quotas {
            let q = ((n as f64 * share).ceil() as usize).max(1);
            for &i in order.iter().skip(k).take(q) {
                out[i] = name;
            }
            k += q;
        }
    }
    out
}

fn jsonl<T: Serialize>(path: &Path, lines: &[T]) -> Result<(), SynthError> {
    let mut buf = String::new();
    for l in lines {
        buf.push_str(&serde_json::to_string(l).map_err(|e| SynthError::io(path, e.into()))?);
        buf.push('\n');
    }
    out::write(path, buf.as_bytes())
}

fn bump(map: &mut BTreeMap<String, usize>, key: &str) {
    *map.entry(key.to_string()).or_insert(0) += 1;
}

// ---------------------------------------------------------------- CheXpert

struct CxStudy {
    findings: Vec<Finding>,
    /// `AP`/`PA` of the frontal view.
    projection: &'static str,
    lateral: bool,
    seed: u64,
}

struct CxPatient {
    sex: &'static str,
    age: u32,
    studies: Vec<CxStudy>,
    seed: u64,
}

fn chexpert_plan(cfg: &SynthConfig) -> Vec<CxPatient> {
    let mut master = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x4348_4558_5054);
    let mut patients = Vec::new();
    let mut n = 0;
    while n < cfg.chexpert_images {
        let seed: u64 = master.random();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let sex = match rng.random_range(0..100) {
            0..55 => "Male",
            55..99 => "Female",
            _ => "Unknown",
        };
        let age = rng.random_range(18..91u32);
        let mut studies = Vec::new();
        for _ in 0..rng.random_range(1..=3) {
            if n >= cfg.chexpert_images {
                break;
            }
            let findings = findings::draw_findings(&mut rng);
            // Most CheXpert frontals are portable AP films.
            let projection = if rng.random_bool(0.7) { "AP" } else { "PA" };
            let lateral = rng.random_bool(0.3) && n + 1 < cfg.chexpert_images;
            n += 1 + lateral as usize;
            studies.push(CxStudy {
                findings,
                projection,
                lateral,
                seed: rng.random(),
            });
        }
        patients.push(CxPatient {
            sex,
            age,
            studies,
            seed,
        });
    }
    patients
}

/// A CheXpert split: its CSV, its image folder, how `Path` is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CxSplit {
    Train,
    Valid,
    Test,
}

impl CxSplit {
    fn dir(self) -> &'static str {
        match self {
            CxSplit::Train => "train",
            CxSplit::Valid => "valid",
            CxSplit::Test => "test",
        }
    }
}

/// The label cells of a study in a split's convention.
fn chexpert_cells(f: &[Finding], split: CxSplit) -> [&'static str; 14] {
    let row = findings::chexpert_row(f);
    match split {
        CxSplit::Train => row,
        // Read off the images: drawn at all → 1.
        CxSplit::Valid => row.map(|c| {
            if matches!(c, "1.0" | "-1.0") {
                "1.0"
            } else {
                "0.0"
            }
        }),
        CxSplit::Test => row.map(|c| {
            if matches!(c, "1.0" | "-1.0") {
                "1"
            } else {
                "0"
            }
        }),
    }
}

struct CxImage {
    split: CxSplit,
    /// Path under the dataset folder.
    rel: String,
    frontal: bool,
    projection: &'static str,
    row: Vec<String>,
    line: TreeLesionLine,
    cells: [&'static str; 14],
}

fn chexpert_patient(
    out: &Path,
    p: &CxPatient,
    split: CxSplit,
    number: u32,
    size: u32,
) -> Result<Vec<CxImage>, SynthError> {
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ 0xA7A7);
    let anat = Anatomy::random(&mut rng);
    let mut images = Vec::new();
    for (s, st) in p.studies.iter().enumerate() {
        let cells = chexpert_cells(&st.findings, split);
        let mut srng = ChaCha8Rng::seed_from_u64(st.seed);
        let views: &[(View, &str)] = if st.lateral {
            &[
                (View::Frontal, "view1_frontal"),
                (View::Lateral, "view2_lateral"),
            ]
        } else {
            &[(View::Frontal, "view1_frontal")]
        };
        for &(view, stem) in views {
            let (w, h) = (width_for(&mut srng, size, 0.78), size);
            let seed: u64 = srng.random();
            let d = draw(&st.findings, &anat, view, w, h, seed);
            let rel = format!(
                "{}/patient{number:05}/study{}/{stem}.jpg",
                split.dir(),
                s + 1
            );
            let file = format!("{}/{CHEXPERT_DATASET}/{rel}", files::CHEXPERT);
            write_image(&out.join(&file), &d.pixels, w, h, Codec::Jpeg)?;
            let frontal = view == View::Frontal;
            let mut row = Vec::with_capacity(19);
            if split == CxSplit::Test {
                // The released test labels: `Path` from the dataset folder
                // and the classes, nothing else.
                row.push(rel.clone());
            } else {
                row.push(format!("{CHEXPERT_DATASET}/{rel}"));
                row.push(p.sex.to_string());
                row.push(p.age.to_string());
                row.push(if frontal { "Frontal" } else { "Lateral" }.to_string());
                row.push(if frontal { st.projection } else { "" }.to_string());
            }
            row.extend(cells.iter().map(|c| c.to_string()));
            let lesions = d
                .visible
                .iter()
                .map(|&(c, cert, bbox)| TreeLesion {
                    class: CHEXPERT_CLASSES[c].0,
                    label: Some(cells[c].to_string()),
                    bbox,
                    certainty: cert.name(),
                })
                .collect();
            images.push(CxImage {
                split,
                frontal,
                projection: st.projection,
                line: TreeLesionLine {
                    source: "chexpert",
                    image_id: format!("patient{number:05}_study{}_{stem}", s + 1),
                    path: file,
                    width: w,
                    height: h,
                    lesions,
                },
                rel,
                row,
                cells,
            });
        }
    }
    Ok(images)
}

fn chexpert(out: &Path, cfg: &SynthConfig) -> Result<TreeCounts, SynthError> {
    let plan = chexpert_plan(cfg);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x4358_5350_4C54);
    let splits = deal(
        plan.len(),
        &[("valid", 0.1), ("test", 0.1)],
        "train",
        &mut rng,
    );
    // Numbered per split from the release's first number, in plan order.
    let mut next = [1u32, CHEXPERT_VALID_FROM, CHEXPERT_TEST_FROM];
    let jobs: Vec<(CxSplit, u32)> = splits
        .iter()
        .map(|s| {
            let (split, k) = match *s {
                "valid" => (CxSplit::Valid, 1),
                "test" => (CxSplit::Test, 2),
                _ => (CxSplit::Train, 0),
            };
            next[k] += 1;
            (split, next[k] - 1)
        })
        .collect();
    let results: Vec<Result<Vec<CxImage>, SynthError>> = plan
        .par_iter()
        .zip(&jobs)
        .map(|(p, &(split, number))| chexpert_patient(out, p, split, number, cfg.size))
        .collect();
    let mut images = Vec::new();
    for r in results {
        images.extend(r?);
    }
    // Rows in patient, study, view order, as released.
    images.sort_by(|a, b| a.rel.cmp(&b.rel));

    let root = out.join(files::CHEXPERT);
    let ds = root.join(CHEXPERT_DATASET);
    let classes: Vec<&str> = CHEXPERT_CLASSES.iter().map(|c| c.0).collect();
    let mut full = vec!["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"];
    full.extend(&classes);
    let mut test_header = vec!["Path"];
    test_header.extend(&classes);
    for (split, name, header) in [
        (CxSplit::Train, "train.csv", &full),
        (CxSplit::Valid, "valid.csv", &full),
        (CxSplit::Test, "test_labels.csv", &test_header),
    ] {
        let rows: Vec<Vec<String>> = images
            .iter()
            .filter(|i| i.split == split)
            .map(|i| i.row.clone())
            .collect();
        out::write(&ds.join(name), out::csv_text(header, &rows)?.as_bytes())?;
    }

    let mut counts = TreeCounts {
        root: files::CHEXPERT.into(),
        patients: plan.len(),
        images: images.len(),
        ..Default::default()
    };
    for i in &images {
        bump(&mut counts.images_per_split, i.split.dir());
        let view = if !i.frontal { "Lateral" } else { i.projection };
        bump(&mut counts.images_per_view, view);
        for (c, cell) in i.cells.iter().enumerate() {
            match *cell {
                "1.0" | "1" => bump(&mut counts.labels, classes[c]),
                "-1.0" => counts.uncertain_cells += 1,
                "" => counts.blank_cells += 1,
                _ => {}
            }
        }
    }
    let lines: Vec<&TreeLesionLine> = images.iter().map(|i| &i.line).collect();
    counts.lesion_lines = lines.len();
    jsonl(&root.join(files::LESIONS), &lines)?;
    Ok(counts)
}

// --------------------------------------------------------------------- NIH

/// CheXpert class → ChestX-ray14 class. Lung Lesion is Nodule or Mass by the
/// drawn size, decided where the finding's variant is known.
fn nih_class(c: usize, variant: u8) -> Option<&'static str> {
    Some(match c {
        class::ATELECTASIS => "Atelectasis",
        class::CARDIOMEGALY => "Cardiomegaly",
        class::CONSOLIDATION => "Consolidation",
        class::EDEMA => "Edema",
        class::EFFUSION => "Effusion",
        class::LUNG_OPACITY => "Infiltration",
        // The renderer draws even variants as small nodules, odd as masses.
        class::LUNG_LESION if variant.is_multiple_of(2) => "Nodule",
        class::LUNG_LESION => "Mass",
        class::PLEURAL_OTHER => "Pleural_Thickening",
        class::PNEUMONIA => "Pneumonia",
        class::PNEUMOTHORAX => "Pneumothorax",
        _ => return None,
    })
}

/// The label `Finding Labels` gives an image without findings.
pub(crate) const NIH_NO_FINDING: &str = "No Finding";

struct NihImage {
    findings: Vec<Finding>,
    view: &'static str,
    seed: u64,
}

struct NihPatient {
    id: u32,
    sex: &'static str,
    age: u32,
    images: Vec<NihImage>,
    seed: u64,
}

fn nih_plan(cfg: &SynthConfig) -> Vec<NihPatient> {
    let mut master = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x4E49_4843_5852);
    let mut patients = Vec::new();
    let mut n = 0;
    let mut id = 0u32;
    while n < cfg.nih_images {
        id += 1 + master.random_range(0..3u32);
        let seed: u64 = master.random();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let sex = if rng.random_bool(0.56) { "M" } else { "F" };
        let age = rng.random_range(1..95u32);
        let k = rng.random_range(1..=4usize).min(cfg.nih_images - n);
        let images = (0..k)
            .map(|_| {
                let mut f = findings::draw_findings(&mut rng);
                // Only what the release can name is drawn; tubes stay (they
                // are in the real images, never in the labels).
                f.retain(|x| {
                    x.certainty == Certainty::Positive
                        && (x.class == class::SUPPORT_DEVICES || nih_class(x.class, 0).is_some())
                });
                NihImage {
                    findings: f,
                    view: if rng.random_bool(0.6) { "PA" } else { "AP" },
                    seed: rng.random(),
                }
            })
            .collect();
        n += k;
        patients.push(NihPatient {
            id,
            sex,
            age,
            images,
            seed,
        });
    }
    patients
}

struct NihOut {
    name: String,
    row: String,
    labels: Vec<&'static str>,
    view: &'static str,
    line: TreeLesionLine,
}

fn nih_patient(out: &Path, p: &NihPatient, size: u32) -> Result<Vec<NihOut>, SynthError> {
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ 0xA7A7);
    let anat = Anatomy::random(&mut rng);
    let mut res = Vec::new();
    for (k, img) in p.images.iter().enumerate() {
        let name = format!("{:08}_{k:03}.png", p.id);
        let file = format!("{}/images/{name}", files::NIH);
        // The release's PNGs are all 1024 x 1024; here size x size.
        let d = draw(&img.findings, &anat, View::Frontal, size, size, img.seed);
        write_image(&out.join(&file), &d.pixels, size, size, Codec::Png)?;
        let variant_of = |c: usize| {
            img.findings
                .iter()
                .find(|f| f.class == c)
                .map_or(0, |f| f.variant)
        };
        let lesions: Vec<TreeLesion> = d
            .visible
            .iter()
            .map(|&(c, cert, bbox)| TreeLesion {
                class: CHEXPERT_CLASSES[c].0,
                label: nih_class(c, variant_of(c)).map(String::from),
                bbox,
                certainty: cert.name(),
            })
            .collect();
        let mut labels: Vec<&'static str> = d
            .visible
            .iter()
            .filter_map(|&(c, _, _)| nih_class(c, variant_of(c)))
            .collect();
        labels.sort();
        labels.dedup();
        let cell = if labels.is_empty() {
            NIH_NO_FINDING.to_string()
        } else {
            labels.join("|")
        };
        let mut irng = ChaCha8Rng::seed_from_u64(img.seed ^ 0x0D1C);
        let (ow, oh) = (
            irng.random_range(2000..3056u32),
            irng.random_range(2000..3056u32),
        );
        let spacing = ["0.143", "0.139", "0.168"][irng.random_range(0..3)];
        let row = format!(
            "{name},{cell},{k},{},{},{},{},{ow},{oh},{spacing},{spacing}",
            p.id, p.age, p.sex, img.view
        );
        res.push(NihOut {
            line: TreeLesionLine {
                source: "nih",
                image_id: name.clone(),
                path: file,
                width: size,
                height: size,
                lesions,
            },
            name,
            row,
            labels,
            view: img.view,
        });
    }
    Ok(res)
}

fn nih(out: &Path, cfg: &SynthConfig) -> Result<TreeCounts, SynthError> {
    let plan = nih_plan(cfg);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x4E49_4853_504C);
    // The official lists keep each patient on one side, about a fifth test.
    let splits = deal(plan.len(), &[("test", 0.2)], "train_val", &mut rng);
    let results: Vec<Result<Vec<NihOut>, SynthError>> = plan
        .par_iter()
        .map(|p| nih_patient(out, p, cfg.size))
        .collect();
    let root = out.join(files::NIH);
    let mut csv = format!("{NIH_HEADER}\n");
    let mut lists: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut counts = TreeCounts {
        root: files::NIH.into(),
        patients: plan.len(),
        ..Default::default()
    };
    let mut lines = Vec::new();
    for (r, split) in results.into_iter().zip(&splits) {
        for img in r? {
            csv.push_str(&img.row);
            csv.push('\n');
            lists.entry(split).or_default().push(img.name);
            counts.images += 1;
            bump(&mut counts.images_per_split, split);
            bump(&mut counts.images_per_view, img.view);
            if img.labels.is_empty() {
                bump(&mut counts.labels, NIH_NO_FINDING);
            }
            for l in &img.labels {
                bump(&mut counts.labels, l);
            }
            lines.push(img.line);
        }
    }
    out::write(&root.join(NIH_CSV), csv.as_bytes())?;
    for (split, name) in [
        ("train_val", "train_val_list.txt"),
        ("test", "test_list.txt"),
    ] {
        let mut names = lists.remove(split).unwrap_or_default();
        names.sort();
        let text: String = names.iter().map(|n| format!("{n}\n")).collect();
        out::write(&root.join(name), text.as_bytes())?;
    }
    counts.lesion_lines = lines.len();
    jsonl(&root.join(files::LESIONS), &lines)?;
    Ok(counts)
}

// ------------------------------------------------------------------ COVIDx

/// The CheXpert classes whose opacities make a COVIDx image positive.
const COVID_CLASSES: [usize; 2] = [class::PNEUMONIA, class::CONSOLIDATION];

struct CovidImage {
    findings: Vec<Finding>,
    file: String,
    seed: u64,
}

struct CovidPatient {
    id: String,
    source: &'static str,
    images: Vec<CovidImage>,
}

fn hex(rng: &mut ChaCha8Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16u32), 16).unwrap_or('0'))
        .collect()
}

fn covidx_plan(cfg: &SynthConfig) -> Vec<CovidPatient> {
    let mut master = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x434F_5649_4458);
    let mut patients = Vec::new();
    let mut used = HashSet::new();
    let mut n = 0;
    while n < cfg.covidx_images {
        let seed: u64 = master.random();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let source = COVIDX_SOURCES[rng.random_range(0..COVIDX_SOURCES.len())];
        let id = if rng.random_bool(0.5) {
            rng.random_range(1..100_000u32).to_string()
        } else {
            format!("ANON{}", rng.random_range(1..10_000u32))
        };
        if !used.insert(id.clone()) {
            continue;
        }
        let positive = rng.random_bool(0.5);
        let codec = if rng.random_bool(0.6) {
            Codec::Png
        } else {
            Codec::Jpeg
        };
        let k = if rng.random_bool(0.25) { 2 } else { 1 }.min(cfg.covidx_images - n);
        let images = (0..k)
            .map(|_| {
                let mut f = findings::draw_findings(&mut rng);
                f.retain(|x| {
                    x.certainty == Certainty::Positive && !COVID_CLASSES.contains(&x.class)
                });
                if positive {
                    // Pneumonia on one side, often consolidation on the other:
                    // the bilateral picture of the COVID-19 films.
                    let left = rng.random_bool(0.5);
                    for (i, &c) in COVID_CLASSES.iter().enumerate() {
                        if i == 1 && rng.random_bool(0.4) {
                            continue;
                        }
                        f.push(Finding {
                            class: c,
                            certainty: Certainty::Positive,
                            left: left ^ (i == 1),
                            bilateral: false,
                            zone: rng.random_range(1..3),
                            severity: rng.random_range(1..3),
                            variant: rng.random_range(0..4),
                        });
                    }
                }
                CovidImage {
                    findings: f,
                    file: format!("{}.{}", hex(&mut rng, 32), codec.ext()),
                    seed: rng.random(),
                }
            })
            .collect();
        n += k;
        patients.push(CovidPatient { id, source, images });
    }
    patients
}

struct CovidOut {
    line: String,
    positive: bool,
    tree_line: TreeLesionLine,
}

fn covidx_patient(
    out: &Path,
    p: &CovidPatient,
    split: &str,
    size: u32,
) -> Result<Vec<CovidOut>, SynthError> {
    let mut res = Vec::new();
    for img in &p.images {
        let mut rng = ChaCha8Rng::seed_from_u64(img.seed);
        // COVIDx gathers images of many sites: no shared anatomy.
        let anat = Anatomy::random(&mut rng);
        let (w, h) = (width_for(&mut rng, size, 0.8), size);
        let file = format!("{}/{split}/{}", files::COVIDX, img.file);
        let d = draw(&img.findings, &anat, View::Frontal, w, h, rng.random());
        let codec = if img.file.ends_with(".png") {
            Codec::Png
        } else {
            Codec::Jpeg
        };
        write_image(&out.join(&file), &d.pixels, w, h, codec)?;
        let positive = d.visible.iter().any(|(c, _, _)| COVID_CLASSES.contains(c));
        let label = if positive { "positive" } else { "negative" };
        let lesions = d
            .visible
            .iter()
            .map(|&(c, cert, bbox)| TreeLesion {
                class: CHEXPERT_CLASSES[c].0,
                label: COVID_CLASSES.contains(&c).then(|| "positive".to_string()),
                bbox,
                certainty: cert.name(),
            })
            .collect();
        res.push(CovidOut {
            line: format!("{} {} {label} {}", p.id, img.file, p.source),
            positive,
            tree_line: TreeLesionLine {
                source: "covidx",
                image_id: img.file.clone(),
                path: file,
                width: w,
                height: h,
                lesions,
            },
        });
    }
    Ok(res)
}

fn covidx(out: &Path, cfg: &SynthConfig) -> Result<TreeCounts, SynthError> {
    let plan = covidx_plan(cfg);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x4356_5853_504C);
    let splits = deal(
        plan.len(),
        &[("val", 0.1), ("test", 0.1)],
        "train",
        &mut rng,
    );
    let results: Vec<Result<Vec<CovidOut>, SynthError>> = plan
        .par_iter()
        .zip(&splits)
        .map(|(p, split)| covidx_patient(out, p, split, cfg.size))
        .collect();
    let root = out.join(files::COVIDX);
    let mut counts = TreeCounts {
        root: files::COVIDX.into(),
        patients: plan.len(),
        ..Default::default()
    };
    let mut text: BTreeMap<&str, String> = BTreeMap::new();
    let mut lines = Vec::new();
    for (r, split) in results.into_iter().zip(&splits) {
        for img in r? {
            let t = text.entry(split).or_default();
            t.push_str(&img.line);
            t.push('\n');
            counts.images += 1;
            bump(&mut counts.images_per_split, split);
            bump(&mut counts.images_per_view, "Frontal");
            let label = if img.positive { "positive" } else { "negative" };
            bump(&mut counts.labels, label);
            lines.push(img.tree_line);
        }
    }
    // Every split's file and folder, even an empty one, so the tree always
    // reads as a release.
    for split in ["train", "val", "test"] {
        std::fs::create_dir_all(root.join(split)).map_err(|e| SynthError::io(&root, e))?;
        let t = text.remove(split).unwrap_or_default();
        out::write(&root.join(format!("{split}.txt")), t.as_bytes())?;
    }
    counts.lesion_lines = lines.len();
    jsonl(&root.join(files::LESIONS), &lines)?;
    Ok(counts)
}

// -------------------------------------------------------------------- RSNA

/// The (side, zone) places of a lung an opacity can take; a positive
/// patient's opacities take distinct ones, so their boxes are separate
/// findings, as the release's several boxes per patient are.
const LUNG_PLACES: [(bool, u8); 6] = [
    (false, 0),
    (false, 1),
    (false, 2),
    (true, 0),
    (true, 1),
    (true, 2),
];

struct RsnaPatient {
    id: String,
    findings: Vec<Finding>,
    /// `PA` or `AP`: the release holds both, a little more PA.
    view: &'static str,
    seed: u64,
}

/// A patientId shaped as the release's: a random (version 4) UUID.
fn uuid(rng: &mut ChaCha8Rng) -> String {
    let variant = ['8', '9', 'a', 'b'][rng.random_range(0..4)];
    format!(
        "{}-{}-4{}-{variant}{}-{}",
        hex(rng, 8),
        hex(rng, 4),
        hex(rng, 3),
        hex(rng, 3),
        hex(rng, 12)
    )
}

fn rsna_plan(cfg: &SynthConfig) -> Vec<RsnaPatient> {
    let mut master = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5253_4E41_504E);
    let mut patients = Vec::new();
    let mut used = HashSet::new();
    while patients.len() < cfg.rsna_images {
        let seed: u64 = master.random();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let id = uuid(&mut rng);
        if !used.insert(id.clone()) {
            continue;
        }
        let mut f = findings::draw_findings(&mut rng);
        f.retain(|x| {
            x.certainty == Certainty::Positive
                && !COVID_CLASSES.contains(&x.class)
                && x.class != class::LUNG_OPACITY
        });
        // About two in five positive, more than the release's one in five,
        // so that a small tree has both kinds.
        if rng.random_bool(0.4) {
            let k = match rng.random_range(0..10) {
                0..5 => 1,
                5..8 => 2,
                _ => 3,
            };
            let mut places = LUNG_PLACES;
            places.shuffle(&mut rng);
            for &(left, zone) in &places[..k] {
                f.push(Finding {
                    class: COVID_CLASSES[rng.random_bool(0.3) as usize],
                    certainty: Certainty::Positive,
                    left,
                    bilateral: false,
                    zone,
                    severity: rng.random_range(0..3),
                    variant: rng.random_range(0..4),
                });
            }
        }
        patients.push(RsnaPatient {
            id,
            findings: f,
            view: if rng.random_bool(0.55) { "PA" } else { "AP" },
            seed: rng.random(),
        });
    }
    patients
}

struct RsnaOut {
    /// Its lines of the labels file and of the class file.
    labels: String,
    classes: String,
    class: &'static str,
    boxes: usize,
    view: &'static str,
    line: TreeLesionLine,
}

fn rsna_patient(out: &Path, p: &RsnaPatient, size: u32) -> Result<RsnaOut, SynthError> {
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let anat = Anatomy::random(&mut rng);
    // The release's DICOMs are all 1024 x 1024; here size x size.
    let d = draw(&p.findings, &anat, View::Frontal, size, size, rng.random());
    let file = format!("{}/{RSNA_IMAGES_DIR}/{}.dcm", files::RSNA, p.id);
    let uid = |rng: &mut ChaCha8Rng| format!("2.25.{}", rng.random::<u128>() >> 1);
    let h = DicomHeader {
        subject_id: &p.id,
        study_id: "",
        sop_instance_uid: uid(&mut rng),
        study_uid: uid(&mut rng),
        series_uid: uid(&mut rng),
        // The release's dates and times are blanked to one value.
        study_date: "19010101",
        study_time: "000000.00",
        view_position: p.view,
        procedure: "CHEST",
        dx: false,
        monochrome1: false,
        bits_stored: 8,
        rows: size as u16,
        cols: size as u16,
        window: (127.5, 255.0),
    };
    let stored: Vec<u16> = d.pixels.iter().map(|&v| u16::from(v)).collect();
    // 8-bit MONOCHROME2 in JPEG baseline, as the release's files are.
    let bytes = dicom_out::encode(&h, &stored, Syntax::JpegBaseline).map_err(|message| {
        SynthError::Encode {
            path: out.join(&file),
            message,
        }
    })?;
    out::write(&out.join(&file), &bytes)?;

    let opacity = |c: &usize| COVID_CLASSES.contains(c);
    let boxes: Vec<[u32; 4]> = d
        .visible
        .iter()
        .filter(|(c, _, _)| opacity(c))
        .map(|v| v.2)
        .collect();
    let class = if !boxes.is_empty() {
        LUNG_OPACITY
    } else if d.visible.is_empty() {
        RSNA_NORMAL
    } else {
        RSNA_NOT_NORMAL
    };
    let mut labels = String::new();
    let mut classes = String::new();
    if boxes.is_empty() {
        labels.push_str(&format!("{},,,,,0\n", p.id));
        classes.push_str(&format!("{},{class}\n", p.id));
    }
    for [x0, y0, x1, y1] in &boxes {
        // Top-left corner, width and height, as floats as released; the
        // exclusive end makes `x + width` the first column past the box.
        labels.push_str(&format!(
            "{},{:.1},{:.1},{:.1},{:.1},1\n",
            p.id,
            f64::from(*x0),
            f64::from(*y0),
            f64::from(x1 - x0),
            f64::from(y1 - y0)
        ));
        classes.push_str(&format!("{},{class}\n", p.id));
    }
    let lesions = d
        .visible
        .iter()
        .map(|&(c, cert, bbox)| TreeLesion {
            class: CHEXPERT_CLASSES[c].0,
            label: opacity(&c).then(|| LUNG_OPACITY.to_string()),
            bbox,
            certainty: cert.name(),
        })
        .collect();
    Ok(RsnaOut {
        labels,
        classes,
        class,
        boxes: boxes.len(),
        view: p.view,
        line: TreeLesionLine {
            source: "rsna",
            image_id: p.id.clone(),
            path: file,
            width: size,
            height: size,
            lesions,
        },
    })
}

fn rsna(out: &Path, cfg: &SynthConfig) -> Result<TreeCounts, SynthError> {
    let plan = rsna_plan(cfg);
    let results: Vec<Result<RsnaOut, SynthError>> = plan
        .par_iter()
        .map(|p| rsna_patient(out, p, cfg.size))
        .collect();
    let root = out.join(files::RSNA);
    let mut labels = String::from("patientId,x,y,width,height,Target\n");
    let mut classes = String::from("patientId,class\n");
    let mut counts = TreeCounts {
        root: files::RSNA.into(),
        patients: plan.len(),
        ..Default::default()
    };
    let mut lines = Vec::new();
    // Patients in plan order: as random as the release's order is.
    for r in results {
        let p = r?;
        labels.push_str(&p.labels);
        classes.push_str(&p.classes);
        counts.images += 1;
        counts.boxes += p.boxes;
        // Only the labelled training images are released with labels.
        bump(&mut counts.images_per_split, "train");
        bump(&mut counts.images_per_view, p.view);
        bump(&mut counts.labels, p.class);
        lines.push(p.line);
    }
    out::write(&root.join(RSNA_LABELS), labels.as_bytes())?;
    out::write(&root.join(RSNA_CLASS_INFO), classes.as_bytes())?;
    counts.lesion_lines = lines.len();
    jsonl(&root.join(files::LESIONS), &lines)?;
    Ok(counts)
}

/// Writes the trees asked for by `cfg` and returns their counts.
pub(crate) fn generate(out: &Path, cfg: &SynthConfig) -> Result<DownstreamCounts, SynthError> {
    Ok(DownstreamCounts {
        chexpert: (cfg.chexpert_images > 0)
            .then(|| chexpert(out, cfg))
            .transpose()?,
        nih: (cfg.nih_images > 0).then(|| nih(out, cfg)).transpose()?,
        covidx: (cfg.covidx_images > 0)
            .then(|| covidx(out, cfg))
            .transpose()?,
        rsna: (cfg.rsna_images > 0).then(|| rsna(out, cfg)).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nih_names_are_the_readers_classes() {
        for c in 0..14 {
            for v in 0..4 {
                if let Some(n) = nih_class(c, v) {
                    assert!(schemas::NIH_CLASSES.contains(&n), "{n}");
                }
            }
        }
        assert_eq!(NIH_NO_FINDING, ingest::nih::NO_FINDING);
        assert_eq!(NIH_CSV, format!("{}.csv", ingest::nih::DATA_ENTRY_STEMS[0]));
        assert!(ingest::chexpert::DATASET_DIRS.contains(&CHEXPERT_DATASET));
    }

    #[test]
    fn rsna_names_are_the_readers() {
        use ingest::rsna;
        assert_eq!(RSNA_LABELS, format!("{}.csv", rsna::LABELS_STEM));
        assert_eq!(RSNA_CLASS_INFO, format!("{}.csv", rsna::CLASS_INFO_STEM));
        assert_eq!(RSNA_IMAGES_DIR, rsna::IMAGES_DIR);
        assert_eq!(LUNG_OPACITY, rsna::LUNG_OPACITY);
        assert_eq!([RSNA_NORMAL, RSNA_NOT_NORMAL], rsna::NEGATIVE_CLASSES);
    }

    #[test]
    fn rsna_ids_are_version_4_uuids_and_distinct() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let ids: HashSet<String> = (0..500).map(|_| uuid(&mut rng)).collect();
        assert_eq!(ids.len(), 500);
        for id in &ids {
            let parts: Vec<&str> = id.split('-').collect();
            let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
            assert_eq!(lens, [8, 4, 4, 4, 12], "{id}");
            assert!(parts[2].starts_with('4'), "{id}");
            assert!(parts[3].starts_with(['8', '9', 'a', 'b']), "{id}");
            assert!(
                id.chars()
                    .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{id}"
            );
        }
    }

    #[test]
    fn deal_fills_every_quota_when_patients_suffice() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let s = deal(20, &[("val", 0.1), ("test", 0.1)], "train", &mut rng);
        let count = |n: &str| s.iter().filter(|x| **x == n).count();
        assert_eq!((count("val"), count("test"), count("train")), (2, 2, 16));
        let s = deal(3, &[("val", 0.1), ("test", 0.1)], "train", &mut rng);
        assert_eq!(s.iter().filter(|x| **x == "train").count(), 1);
        let s = deal(2, &[("val", 0.1), ("test", 0.1)], "train", &mut rng);
        assert_eq!(s, ["train", "train"]);
    }

    #[test]
    fn valid_and_test_cells_are_never_blank_or_uncertain() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..200 {
            let f = findings::draw_findings(&mut rng);
            let train = chexpert_cells(&f, CxSplit::Train);
            for (split, one) in [(CxSplit::Valid, "1.0"), (CxSplit::Test, "1")] {
                let cells = chexpert_cells(&f, split);
                for (t, c) in train.iter().zip(cells) {
                    assert_eq!(c == one, matches!(*t, "1.0" | "-1.0"), "{t} -> {c}");
                }
            }
        }
    }
}
