//! The MIMIC-CXR part: plan subjects and studies, then draw and write each
//! study (in parallel), then the index CSVs and the NER sidecar.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use ::text::report::{DEFAULT_SECTIONS, parse_report, training_text};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use schemas::CHEXPERT_CLASSES;

use crate::dicom_out::{self, DicomHeader, Syntax};
use crate::findings::{self, Certainty, Finding, class};
use crate::out::{self, LesionLine, LesionRecord};
use crate::render::{self, Anatomy, View};
use crate::text;
use crate::{MimicCounts, MimicFormat, SynthConfig, SynthError, files};

/// Column names of the index CSVs, as in MIMIC-CXR 2.0.0.
pub(crate) const METADATA_COLUMNS: [&str; 12] = [
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
];
pub(crate) const SPLIT_COLUMNS: [&str; 4] = ["dicom_id", "study_id", "subject_id", "split"];
pub(crate) const METADATA_CSV: &str = "mimic-cxr-2.0.0-metadata.csv.gz";
pub(crate) const SPLIT_CSV: &str = "mimic-cxr-2.0.0-split.csv.gz";
pub(crate) const CHEXPERT_CSV: &str = "mimic-cxr-2.0.0-chexpert.csv.gz";
pub(crate) const NEGBIO_CSV: &str = "mimic-cxr-2.0.0-negbio.csv.gz";

/// A role a study plays when faults are injected; its images get the
/// transfer syntax the fault needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultRole {
    Truncate,
    Garbage,
    MissingImage,
    MissingReport,
    MalformedRow,
}

struct ImagePlan {
    dicom_id: String,
    view_position: &'static str,
    view: View,
    rows: u32,
    cols: u32,
    syntax: Syntax,
    mono1: bool,
    dx: bool,
    seed: u64,
    orientation: &'static str,
}

struct StudyPlan {
    subject: u32,
    study: u32,
    split: &'static str,
    findings: Vec<Finding>,
    images: Vec<ImagePlan>,
    date: String,
    time_csv: String,
    time_dicom: String,
    portable: bool,
    seed: u64,
    fault: Option<FaultRole>,
}

/// What faults need to know about a written study.
pub(crate) struct StudyRecord {
    pub subject: String,
    pub study: String,
    pub fault: Option<FaultRole>,
    /// Report path relative to the output folder, per root.
    pub reports: Vec<String>,
    /// (dicom_id, path per root relative to the output folder).
    pub images: Vec<(String, Vec<String>)>,
}

/// The MIMIC part as written.
pub(crate) struct MimicOut {
    pub counts: MimicCounts,
    pub lesion_lines: Vec<LesionLine>,
    pub studies: Vec<StudyRecord>,
    /// Root folder names (relative), first one holds DICOMs unless jpg-only.
    pub roots: Vec<&'static str>,
    pub primary_is_dicom: bool,
}

fn subject_dir(subject: u32) -> String {
    let s = subject.to_string();
    format!("files/p{}/p{}", &s[..2], s)
}

fn dicom_id(rng: &mut ChaCha8Rng) -> String {
    let g: Vec<String> = (0..5)
        .map(|_| format!("{:08x}", rng.random::<u32>()))
        .collect();
    g.join("-")
}

/// A 2.25 UID (UUID-derived, at most 64 characters) from 128 random bits.
fn uid(rng: &mut ChaCha8Rng) -> String {
    format!("2.25.{}", rng.random::<u128>() >> 1)
}

fn pick_syntax(rng: &mut ChaCha8Rng) -> Syntax {
    let r = rng.random_range(0..100);
    match r {
        0..30 => Syntax::ExplicitLe,
        30..45 => Syntax::ImplicitLe,
        45..55 => Syntax::DeflatedExplicitLe,
        55..80 => Syntax::JpegLsLossless,
        80..88 => Syntax::JpegLsNearLossless,
        _ => Syntax::JpegBaseline,
    }
}

fn plan(cfg: &SynthConfig) -> Vec<StudyPlan> {
    let mut master = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x4D49_4D49_4300);
    let mut used_subjects = HashSet::new();
    let mut used_studies = HashSet::new();
    let mut plans = Vec::with_capacity(cfg.studies);
    while plans.len() < cfg.studies {
        let subject = loop {
            let s = 10_000_000 + master.random_range(0..10_000_000u32);
            if used_subjects.insert(s) {
                break s;
            }
        };
        let n = master
            .random_range(1..=3usize)
            .min(cfg.studies - plans.len());
        let mut year = 2110 + master.random_range(0..90u32);
        let mut day_of_year = master.random_range(0..300u32);
        for _ in 0..n {
            let study = loop {
                let s = 50_000_000 + master.random_range(0..10_000_000u32);
                if used_studies.insert(s) {
                    break s;
                }
            };
            let seed: u64 = master.random();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let findings = findings::draw_findings(&mut rng);
            let devices = findings.iter().any(|f| f.class == class::SUPPORT_DEVICES);
            let portable = rng.random_bool(if devices { 0.7 } else { 0.3 });
            let n_img = if portable {
                if rng.random_bool(0.8) { 1 } else { 2 }
            } else {
                [1, 2, 2, 2, 3][rng.random_range(0..5)]
            };
            let mut images = Vec::new();
            for k in 0..n_img {
                let (mut vp, view) = match k {
                    0 if portable => ("AP", View::Frontal),
                    0 => ("PA", View::Frontal),
                    1 if rng.random_bool(0.15) => ("LL", View::Lateral),
                    1 => ("LATERAL", View::Lateral),
                    _ if rng.random_bool(0.5) => ("LATERAL", View::Lateral),
                    _ if portable => ("AP", View::Frontal),
                    _ => ("PA", View::Frontal),
                };
                if rng.random_bool(0.03) {
                    vp = "";
                }
                let rows = cfg.size;
                let ratio = match view {
                    View::Frontal => rng.random_range(0.82..1.0f32),
                    View::Lateral => rng.random_range(0.88..1.0f32),
                };
                let cols = (((rows as f32 * ratio) as u32) & !1).max(32);
                images.push(ImagePlan {
                    dicom_id: dicom_id(&mut rng),
                    view_position: vp,
                    view,
                    rows,
                    cols,
                    syntax: pick_syntax(&mut rng),
                    mono1: rng.random_bool(0.2),
                    dx: rng.random_bool(0.5),
                    seed: rng.random(),
                    orientation: if portable {
                        ["Recumbent", "Erect", ""][rng.random_range(0..3)]
                    } else {
                        "Erect"
                    },
                });
            }
            day_of_year += master.random_range(1..60u32);
            if day_of_year >= 336 {
                day_of_year -= 336;
                year += 1;
            }
            let (month, day) = (day_of_year / 28 + 1, day_of_year % 28 + 1);
            let (h, m, s, ms) = (
                master.random_range(0..24u32),
                master.random_range(0..60u32),
                master.random_range(0..60u32),
                master.random_range(0..1000u32),
            );
            plans.push(StudyPlan {
                subject,
                study,
                split: "train",
                findings,
                images,
                date: format!("{year}{month:02}{day:02}"),
                // The CSV holds StudyTime as a float, leading zero lost.
                time_csv: format!("{}{:02}{:02}.{:03}", h, m, s, ms),
                time_dicom: format!("{h:02}{m:02}{s:02}.{ms:03}"),
                portable,
                seed,
                fault: None,
            });
        }
    }
    assign_splits(&mut plans, &mut master);
    plans
}

/// Splits by subject (so no patient is in two splits), ≈ 80/10/10, then
/// moves whole train subjects so that validate and test each hold at least
/// one positive study of every class that has positives in two or more
/// subjects: a small world can still be evaluated per class.
fn assign_splits(plans: &mut [StudyPlan], rng: &mut ChaCha8Rng) {
    let mut subjects: Vec<u32> = Vec::new();
    for p in plans.iter() {
        if subjects.last() != Some(&p.subject) {
            subjects.push(p.subject);
        }
    }
    let mut split: BTreeMap<u32, &'static str> = BTreeMap::new();
    for &s in &subjects {
        let r: f64 = rng.random();
        split.insert(
            s,
            if r < 0.8 {
                "train"
            } else if r < 0.9 {
                "validate"
            } else {
                "test"
            },
        );
    }
    let positive = |p: &StudyPlan, c: usize| findings::chexpert_row(&p.findings)[c] == "1.0";
    for c in 0..CHEXPERT_CLASSES.len() {
        for target in ["validate", "test"] {
            let has = |split: &BTreeMap<u32, &str>, name: &str| {
                plans
                    .iter()
                    .any(|p| split[&p.subject] == name && positive(p, c))
            };
            if has(&split, target) {
                continue;
            }
            let mut cands: Vec<u32> = plans
                .iter()
                .filter(|p| split[&p.subject] == "train" && positive(p, c))
                .map(|p| p.subject)
                .collect();
            cands.dedup();
            if cands.len() < 2 {
                continue;
            }
            cands.shuffle(rng);
            split.insert(cands[0], target);
        }
    }
    for p in plans.iter_mut() {
        p.split = split[&p.subject];
    }
}

/// What one study produced.
struct StudyOut {
    report: String,
    layout: &'static str,
    entities: Vec<String>,
    lesion_lines: Vec<LesionLine>,
    meta_rows: Vec<Vec<String>>,
    split_rows: Vec<Vec<String>>,
    syntaxes: Vec<(Syntax, bool)>,
    record: StudyRecord,
}

/// The per-study randomness that every view shares: the report and the
/// patient's anatomy, in this order (tests redraw images from it).
fn study_prelude(p: &StudyPlan) -> (text::Report, Anatomy, ChaCha8Rng) {
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ 0x5EED);
    let report = text::build_report(&p.findings, p.portable, &mut rng);
    let anat = Anatomy::random(&mut rng);
    (report, anat, rng)
}

/// One drawn image: MONOCHROME2 stored values and what went into them.
struct Drawn {
    mono2: Vec<u16>,
    bits: u16,
    window: (f64, f64),
    lesions: Vec<render::Lesion>,
    boxes: Vec<Option<[u32; 4]>>,
    /// The image's generator, positioned after the drawing (UIDs come next).
    rng: ChaCha8Rng,
}

fn draw_image(p: &StudyPlan, anat: &Anatomy, img: &ImagePlan, with_lesions: bool) -> Drawn {
    let mut irng = ChaCha8Rng::seed_from_u64(img.seed);
    let mut lesions = findings::lesions_for(&p.findings, anat, img.view, &mut irng);
    if !with_lesions {
        lesions.clear();
    }
    let r = render::render(
        anat,
        img.view,
        &lesions,
        img.cols as usize,
        img.rows as usize,
        img.seed,
    );
    let bits: u16 = if img.syntax.eight_bit() { 8 } else { 12 };
    let (offset, span) = if bits == 8 {
        (
            irng.random_range(4.0..14.0f32),
            irng.random_range(215.0..238.0f32),
        )
    } else {
        (
            irng.random_range(80.0..400.0f32),
            irng.random_range(2900.0..3600.0f32),
        )
    };
    let mono2 = out::to_stored(&r.density, offset, span, bits);
    let window = ((offset + 0.45 * span) as f64, (0.8 * span) as f64);
    Drawn {
        mono2,
        bits,
        window,
        lesions,
        boxes: r.boxes,
        rng: irng,
    }
}

fn write_study(
    out: &Path,
    roots: &[(&'static str, bool)],
    p: &StudyPlan,
) -> Result<StudyOut, SynthError> {
    let (report, anat, mut rng) = study_prelude(p);
    let subject = p.subject.to_string();
    let study = p.study.to_string();
    let sdir = subject_dir(p.subject);
    let mut reports = Vec::new();
    for (root, _) in roots {
        let rel = format!("{root}/{sdir}/s{study}.txt");
        out::write(&out.join(&rel), report.text.as_bytes())?;
        reports.push(rel);
    }
    let procedure = if p.portable {
        "CHEST (PORTABLE AP)"
    } else {
        "CHEST (PA AND LAT)"
    };
    let study_uid = uid(&mut rng);
    let mut lesion_lines = Vec::new();
    let mut meta_rows = Vec::new();
    let mut split_rows = Vec::new();
    let mut syntaxes = Vec::new();
    let mut images = Vec::new();
    for img in &p.images {
        let Drawn {
            mono2,
            bits,
            window,
            lesions,
            boxes,
            rng: mut irng,
        } = draw_image(p, &anat, img, true);
        let mut paths = Vec::new();
        for (root, dicom) in roots {
            let rel = format!(
                "{root}/{sdir}/s{study}/{}.{}",
                img.dicom_id,
                if *dicom { "dcm" } else { "jpg" }
            );
            let path = out.join(&rel);
            let bytes = if *dicom {
                let max = (1u32 << bits) as u16 - 1;
                let stored: Vec<u16> = if img.mono1 {
                    mono2.iter().map(|&v| max - v).collect()
                } else {
                    mono2.clone()
                };
                let h = DicomHeader {
                    subject_id: &subject,
                    study_id: &study,
                    sop_instance_uid: uid(&mut irng),
                    study_uid: study_uid.clone(),
                    series_uid: uid(&mut irng),
                    study_date: &p.date,
                    study_time: &p.time_dicom,
                    view_position: img.view_position,
                    procedure,
                    dx: img.dx,
                    monochrome1: img.mono1,
                    bits_stored: bits,
                    rows: img.rows as u16,
                    cols: img.cols as u16,
                    window: if img.mono1 {
                        (((1u32 << bits) - 1) as f64 - window.0, window.1)
                    } else {
                        window
                    },
                };
                syntaxes.push((img.syntax, img.mono1));
                dicom_out::encode(&h, &stored, img.syntax).map_err(|message| {
                    SynthError::Encode {
                        path: path.clone(),
                        message,
                    }
                })?
            } else {
                // MIMIC-CXR-JPG: min-max to 8 bits (no histogram equalisation here).
                let px = out::minmax_u8(&mono2);
                let mut buf = Vec::new();
                let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95);
                image::ImageEncoder::write_image(
                    enc,
                    &px,
                    img.cols,
                    img.rows,
                    image::ExtendedColorType::L8,
                )
                .map_err(|e| SynthError::Encode {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                buf
            };
            out::write(&path, &bytes)?;
            paths.push(rel);
        }
        let mut recs = Vec::new();
        for (l, b) in lesions.iter().zip(&boxes) {
            let Some(bbox) = b else { continue };
            recs.push(LesionRecord {
                source: "mimic",
                image_id: img.dicom_id.clone(),
                study_id: study.clone(),
                class: CHEXPERT_CLASSES[l.class].0.to_string(),
                bbox: *bbox,
                certainty: if l.amp >= 1.0 {
                    Certainty::Positive.name()
                } else {
                    Certainty::Uncertain.name()
                },
            });
        }
        lesion_lines.push(LesionLine {
            source: "mimic",
            image_id: img.dicom_id.clone(),
            study_id: study.clone(),
            path: paths[0].clone(),
            width: img.cols,
            height: img.rows,
            lesions: recs,
        });
        let view_meaning = match img.view_position {
            "PA" => "postero-anterior",
            "AP" => "antero-posterior",
            "LATERAL" => "lateral",
            "LL" => "left lateral",
            _ => "",
        };
        meta_rows.push(vec![
            img.dicom_id.clone(),
            subject.clone(),
            study.clone(),
            procedure.to_string(),
            img.view_position.to_string(),
            img.rows.to_string(),
            img.cols.to_string(),
            p.date.clone(),
            p.time_csv.clone(),
            procedure.to_string(),
            view_meaning.to_string(),
            img.orientation.to_string(),
        ]);
        split_rows.push(vec![
            img.dicom_id.clone(),
            study.clone(),
            subject.clone(),
            p.split.to_string(),
        ]);
        images.push((img.dicom_id.clone(), paths));
    }
    Ok(StudyOut {
        report: report.text,
        layout: report.layout,
        entities: report.entities,
        lesion_lines,
        meta_rows,
        split_rows,
        syntaxes,
        record: StudyRecord {
            subject,
            study,
            fault: p.fault,
            reports,
            images,
        },
    })
}

/// Finds the entity phrases in the training text, in order, as Python
/// character offsets. A phrase not found after the previous one is dropped.
pub(crate) fn locate_entities(text: &str, phrases: &[String]) -> Vec<serde_json::Value> {
    let mut cursor = 0usize;
    let mut out = Vec::new();
    for ph in phrases {
        if ph.is_empty() {
            continue;
        }
        if let Some(pos) = text[cursor..].find(ph.as_str()) {
            let b0 = cursor + pos;
            let b1 = b0 + ph.len();
            let start = out::char_offset(text, b0);
            let end = start + ph.chars().count();
            out.push(serde_json::json!({"start": start, "end": end, "label": "ENTITY", "text": &text[b0..b1]}));
            cursor = b1;
        }
    }
    out
}

pub(crate) fn generate(out: &Path, cfg: &SynthConfig) -> Result<MimicOut, SynthError> {
    let roots: Vec<(&'static str, bool)> = match cfg.mimic_format {
        MimicFormat::Dicom => vec![(files::MIMIC, true)],
        MimicFormat::Jpg => vec![(files::MIMIC, false)],
        MimicFormat::Both => vec![(files::MIMIC, true), (files::MIMIC_JPG, false)],
    };
    let mut plans = plan(cfg);
    if cfg.faults && plans.len() >= 7 {
        use FaultRole::*;
        let roles = [Truncate, Garbage, MissingImage, MissingReport, MalformedRow];
        // Spread over the world rather than all at its end.
        let n = plans.len();
        for (k, role) in roles.into_iter().enumerate() {
            let p = &mut plans[(k * n) / roles.len() + n / 10];
            p.fault = Some(role);
            match role {
                Truncate => p.images[0].syntax = Syntax::ExplicitLe,
                Garbage => p.images[0].syntax = Syntax::JpegLsLossless,
                _ => {}
            }
        }
    }
    let results: Vec<Result<StudyOut, SynthError>> = plans
        .par_iter()
        .map(|p| write_study(out, &roots, p))
        .collect();
    let mut studies = Vec::with_capacity(results.len());
    for r in results {
        studies.push(r?);
    }

    let mut counts = MimicCounts {
        subjects: plans
            .iter()
            .map(|p| p.subject)
            .collect::<HashSet<_>>()
            .len(),
        studies: plans.len(),
        ..Default::default()
    };
    let mut meta_rows = Vec::new();
    let mut split_rows = Vec::new();
    let mut chex_rows = Vec::new();
    let mut negbio_rows = Vec::new();
    let mut sidecar = String::new();
    for (p, s) in plans.iter().zip(&studies) {
        meta_rows.extend(s.meta_rows.iter().cloned());
        split_rows.extend(s.split_rows.iter().cloned());
        *counts.studies_per_split.entry(p.split.into()).or_insert(0) += 1;
        *counts.images_per_split.entry(p.split.into()).or_insert(0) += p.images.len();
        *counts
            .reports_per_layout
            .entry(s.layout.into())
            .or_insert(0) += 1;
        for img in &p.images {
            *counts
                .images_per_view
                .entry(img.view_position.into())
                .or_insert(0) += 1;
        }
        for (syn, mono1) in &s.syntaxes {
            *counts
                .dicom_per_transfer_syntax
                .entry(syn.uid().into())
                .or_insert(0) += 1;
            let pmi = if *mono1 { "MONOCHROME1" } else { "MONOCHROME2" };
            *counts.dicom_per_photometric.entry(pmi.into()).or_insert(0) += 1;
        }
        counts.images += p.images.len();
        let row = findings::chexpert_row(&p.findings);
        let mut chex = vec![p.subject.to_string(), p.study.to_string()];
        chex.extend(row.iter().map(|v| v.to_string()));
        // NegBio: same mentions, but it leaves some uncertain ones unlabelled.
        let mut neg = chex.clone();
        for (c, v) in row.iter().enumerate() {
            if *v == "-1.0" && (p.study as usize + c).is_multiple_of(4) {
                neg[c + 2] = String::new();
            }
            let lc = counts
                .labels
                .entry(CHEXPERT_CLASSES[c].0.into())
                .or_default();
            match *v {
                "1.0" => {
                    lc.positive += 1;
                    *counts
                        .positives_per_split
                        .entry(p.split.into())
                        .or_default()
                        .entry(CHEXPERT_CLASSES[c].0.into())
                        .or_insert(0) += 1;
                }
                "0.0" => lc.negative += 1,
                "-1.0" => lc.uncertain += 1,
                _ => {}
            }
        }
        chex_rows.push(chex);
        negbio_rows.push(neg);
        // The sidecar's text is exactly what ingest will train on.
        let sections = parse_report(&s.report);
        if let Some(t) = training_text(&sections, &DEFAULT_SECTIONS) {
            let ents = locate_entities(&t, &s.entities);
            let line =
                serde_json::json!({"study_id": p.study.to_string(), "text": t, "entities": ents});
            sidecar.push_str(&line.to_string());
            sidecar.push('\n');
            counts.sidecar_lines += 1;
        }
    }
    for lc in counts.labels.values_mut() {
        lc.prevalence = lc.positive as f64 / plans.len().max(1) as f64;
    }
    // The real CSVs are sorted by subject then study; the metadata by the same.
    let order =
        |a: &Vec<String>, b: &Vec<String>, i: usize, j: usize| (&a[i], &a[j]).cmp(&(&b[i], &b[j]));
    meta_rows.sort_by(|a, b| order(a, b, 1, 2).then(a[0].cmp(&b[0])));
    split_rows.sort_by(|a, b| order(a, b, 2, 1).then(a[0].cmp(&b[0])));
    chex_rows.sort_by(|a, b| order(a, b, 0, 1));
    negbio_rows.sort_by(|a, b| order(a, b, 0, 1));
    let mut label_header = vec!["subject_id", "study_id"];
    label_header.extend(CHEXPERT_CLASSES.iter().map(|c| c.0));
    let csvs = [
        (METADATA_CSV, out::csv_text(&METADATA_COLUMNS, &meta_rows)?),
        (SPLIT_CSV, out::csv_text(&SPLIT_COLUMNS, &split_rows)?),
        (CHEXPERT_CSV, out::csv_text(&label_header, &chex_rows)?),
        (NEGBIO_CSV, out::csv_text(&label_header, &negbio_rows)?),
    ];
    for (root, _) in &roots {
        for (name, text) in &csvs {
            out::write(&out.join(root).join(name), &out::gzip(text.as_bytes()))?;
        }
        out::write(&out.join(root).join(files::SIDECAR), sidecar.as_bytes())?;
    }
    let mut lesion_lines = Vec::new();
    let mut records = Vec::new();
    for s in studies {
        lesion_lines.extend(s.lesion_lines);
        records.push(s.record);
    }
    Ok(MimicOut {
        counts,
        lesion_lines,
        studies: records,
        roots: roots.iter().map(|r| r.0).collect(),
        primary_is_dicom: roots[0].1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_pixeldata::PixelDecoder;

    fn small(faults: bool) -> SynthConfig {
        SynthConfig {
            studies: 24,
            padchest_images: 0,
            seed: 5,
            size: 96,
            mimic_format: MimicFormat::Dicom,
            faults,
            ..Default::default()
        }
    }

    #[test]
    fn every_dicom_decodes_to_the_drawn_image() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small(false);
        std::fs::create_dir_all(dir.path()).unwrap();
        generate(dir.path(), &cfg).unwrap();
        let mut seen = HashSet::new();
        for p in plan(&cfg) {
            let (_, anat, _) = study_prelude(&p);
            for img in &p.images {
                let d = draw_image(&p, &anat, img, true);
                let rel = format!(
                    "mimic-cxr/{}/s{}/{}.dcm",
                    subject_dir(p.subject),
                    p.study,
                    img.dicom_id
                );
                let obj = dicom_object::open_file(dir.path().join(&rel)).unwrap();
                let dec = obj.decode_pixel_data().unwrap();
                assert_eq!((dec.rows(), dec.columns()), (img.rows, img.cols));
                let back: Vec<u16> = if d.bits == 8 {
                    dec.data().iter().map(|&b| b as u16).collect()
                } else {
                    dec.data_ow()
                };
                let max = (1u32 << d.bits) as u16 - 1;
                let want: Vec<u16> = if img.mono1 {
                    d.mono2.iter().map(|&v| max - v).collect()
                } else {
                    d.mono2.clone()
                };
                let worst = want
                    .iter()
                    .zip(&back)
                    .map(|(a, b)| (*a as i32 - *b as i32).abs())
                    .max()
                    .unwrap();
                // Near-lossless JPEG-LS: near = 5; baseline JPEG: a few 8-bit levels
                // except at the saturated marker's edges.
                let tol = match img.syntax {
                    s if s.lossless() => 0,
                    Syntax::JpegLsNearLossless => 5,
                    _ => 64,
                };
                assert!(worst <= tol, "{rel} {:?}: max error {worst}", img.syntax);
                if img.syntax == Syntax::JpegBaseline {
                    let mean = want
                        .iter()
                        .zip(&back)
                        .map(|(a, b)| (*a as f64 - *b as f64).abs())
                        .sum::<f64>()
                        / want.len() as f64;
                    assert!(mean < 2.0, "{rel}: mean error {mean}");
                }
                seen.insert(img.syntax);
            }
        }
        assert!(seen.len() >= 4, "only {seen:?} written");
    }

    #[test]
    fn lesion_boxes_differ_from_lesion_free_rendering() {
        let cfg = SynthConfig {
            studies: 40,
            size: 96,
            ..small(false)
        };
        let mut checked = 0;
        for p in plan(&cfg) {
            let (_, anat, _) = study_prelude(&p);
            for img in &p.images {
                let with = draw_image(&p, &anat, img, true);
                let without = draw_image(&p, &anat, img, false);
                for (l, b) in with.lesions.iter().zip(&with.boxes) {
                    let Some(b) = b else { continue };
                    let mut diff = 0f64;
                    let mut n = 0f64;
                    for y in b[1]..b[3] {
                        for x in b[0]..b[2] {
                            let i = (y * img.cols + x) as usize;
                            diff += (with.mono2[i] as f64 - without.mono2[i] as f64).abs();
                            n += 1.0;
                        }
                    }
                    let full = ((1u32 << with.bits) - 1) as f64;
                    // At least 1% of the range on average over the box.
                    assert!(
                        diff / n > 0.01 * full * l.amp as f64,
                        "class {} box {b:?}: {}",
                        l.class,
                        diff / n
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 20, "only {checked} lesions checked");
    }

    #[test]
    #[allow(clippy::needless_range_loop)] // `c` indexes each plan's label row too
    fn validate_and_test_hold_every_positive_class_of_a_300_study_world() {
        let cfg = SynthConfig {
            studies: 300,
            ..small(false)
        };
        let plans = plan(&cfg);
        for c in 0..CHEXPERT_CLASSES.len() {
            let subjects: HashSet<u32> = plans
                .iter()
                .filter(|p| findings::chexpert_row(&p.findings)[c] == "1.0")
                .map(|p| p.subject)
                .collect();
            if subjects.len() < 3 {
                continue;
            }
            for split in ["validate", "test", "train"] {
                assert!(
                    plans.iter().any(
                        |p| p.split == split && findings::chexpert_row(&p.findings)[c] == "1.0"
                    ),
                    "{} has no positive in {split}",
                    CHEXPERT_CLASSES[c].0
                );
            }
        }
        // Leak-free: a subject is in one split only.
        let mut by_subject: BTreeMap<u32, &str> = BTreeMap::new();
        for p in &plans {
            assert_eq!(*by_subject.entry(p.subject).or_insert(p.split), p.split);
        }
    }

    #[test]
    fn entities_are_found_in_order_as_char_offsets() {
        let t = "Ünd small right pleural effusion. No pneumothorax or pleural effusion.";
        let e = locate_entities(
            t,
            &[
                "pleural effusion".into(),
                "pneumothorax".into(),
                "pleural effusion".into(),
            ],
        );
        assert_eq!(e.len(), 3);
        assert_eq!(e[0]["start"], 16);
        let chars: Vec<char> = t.chars().collect();
        for x in &e {
            let (s, n) = (
                x["start"].as_u64().unwrap() as usize,
                x["end"].as_u64().unwrap() as usize,
            );
            assert_eq!(
                chars[s..n].iter().collect::<String>(),
                x["text"].as_str().unwrap()
            );
        }
    }
}
