//! The PadChest part: patients with several studies and images, 16-bit PNGs
//! at `<ImageDir>/<ImageID>`, and the 36-column labels CSV.
//!
//! ImageID includes `.png`, as in the real CSV; the file name is the ImageID
//! itself (no second extension). Reports are Spanish, lower case without
//! accents, as the released (preprocessed) reports are. Stored values use
//! 12, 15 or 16 bits with a saturated marker, so min-max scaling is a poor
//! window and WindowCenter/WindowWidth matter.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use schemas::CHEXPERT_CLASSES;

use crate::findings::{Certainty, Finding, class};
use crate::out::{self, LesionLine, LesionRecord};
use crate::render::{self, Anatomy, View};
use crate::{PadchestCounts, SynthConfig, SynthError, files};

/// The 36 columns of the real CSV; the first is the unnamed pandas index.
pub(crate) const COLUMNS: [&str; 36] = [
    "",
    "ImageID",
    "ImageDir",
    "StudyDate_DICOM",
    "StudyID",
    "PatientID",
    "PatientBirth",
    "PatientSex_DICOM",
    "ViewPosition_DICOM",
    "Projection",
    "MethodProjection",
    "Pediatric",
    "Modality_DICOM",
    "Manufacturer_DICOM",
    "PhotometricInterpretation_DICOM",
    "PixelRepresentation_DICOM",
    "PixelAspectRatio_DICOM",
    "SpatialResolution_DICOM",
    "BitsStored_DICOM",
    "WindowCenter_DICOM",
    "WindowWidth_DICOM",
    "Rows_DICOM",
    "Columns_DICOM",
    "XRayTubeCurrent_DICOM",
    "Exposure_DICOM",
    "ExposureInuAs_DICOM",
    "ExposureTime",
    "RelativeXRayExposure_DICOM",
    "ReportID",
    "Report",
    "MethodLabel",
    "Labels",
    "Localizations",
    "LabelsLocalizationsBySentence",
    "labelCUIS",
    "LocalizationsCUIS",
];

/// A PadChest finding: label, CUI, the Spanish phrase, the CheXpert class it
/// is drawn as (if any), and its chance per abnormal study.
struct Label {
    name: &'static str,
    cui: Option<&'static str>,
    spanish: &'static str,
    class: Option<usize>,
    rate: f64,
}

const LABELS: &[Label] = &[
    Label {
        name: "pleural effusion",
        cui: Some("C2073625"),
        spanish: "derrame pleural",
        class: Some(class::EFFUSION),
        rate: 0.2,
    },
    Label {
        name: "cardiomegaly",
        cui: Some("C0018800"),
        spanish: "cardiomegalia",
        class: Some(class::CARDIOMEGALY),
        rate: 0.25,
    },
    Label {
        name: "pneumonia",
        cui: Some("C0032285"),
        spanish: "neumonia",
        class: Some(class::PNEUMONIA),
        rate: 0.1,
    },
    Label {
        name: "consolidation",
        cui: Some("C0521530"),
        spanish: "consolidacion",
        class: Some(class::CONSOLIDATION),
        rate: 0.06,
    },
    Label {
        name: "atelectasis",
        cui: Some("C0004144"),
        spanish: "atelectasia laminar",
        class: Some(class::ATELECTASIS),
        rate: 0.12,
    },
    Label {
        name: "nodule",
        cui: Some("C0028259"),
        spanish: "nodulo pulmonar",
        class: Some(class::LUNG_LESION),
        rate: 0.08,
    },
    Label {
        name: "pneumothorax",
        cui: Some("C0032326"),
        spanish: "neumotorax",
        class: Some(class::PNEUMOTHORAX),
        rate: 0.04,
    },
    Label {
        name: "pulmonary edema",
        cui: Some("C0034063"),
        spanish: "edema pulmonar",
        class: Some(class::EDEMA),
        rate: 0.06,
    },
    Label {
        name: "infiltrates",
        cui: Some("C0277877"),
        spanish: "infiltrado",
        class: Some(class::LUNG_OPACITY),
        rate: 0.15,
    },
    Label {
        name: "central venous catheter",
        cui: Some("C0179774"),
        spanish: "cateter venoso central",
        class: Some(class::SUPPORT_DEVICES),
        rate: 0.08,
    },
    Label {
        name: "rib fracture",
        cui: Some("C0035522"),
        spanish: "fractura costal",
        class: Some(class::FRACTURE),
        rate: 0.04,
    },
    Label {
        name: "pleural thickening",
        cui: Some("C0264545"),
        spanish: "engrosamiento pleural",
        class: Some(class::PLEURAL_OTHER),
        rate: 0.06,
    },
    Label {
        name: "mediastinal enlargement",
        cui: Some("C0521529"),
        spanish: "ensanchamiento mediastinico",
        class: Some(class::ENLARGED_CM),
        rate: 0.04,
    },
    Label {
        name: "aortic elongation",
        cui: Some("C0741173"),
        spanish: "elongacion aortica",
        class: None,
        rate: 0.15,
    },
    Label {
        name: "COPD signs",
        cui: Some("C0024117"),
        spanish: "signos de epoc",
        class: None,
        rate: 0.08,
    },
    Label {
        name: "scoliosis",
        cui: Some("C0036439"),
        spanish: "escoliosis",
        class: None,
        rate: 0.06,
    },
    Label {
        name: "chronic changes",
        cui: Some("C0742362"),
        spanish: "cambios cronicos",
        class: None,
        rate: 0.1,
    },
    Label {
        name: "unchanged",
        cui: None,
        spanish: "sin cambios respecto a estudio previo",
        class: None,
        rate: 0.1,
    },
];

struct ImagePlan {
    image_id: String,
    dir: u32,
    projection: &'static str,
    view: View,
    rows: u32,
    cols: u32,
    bits: u16,
    seed: u64,
}

struct StudyPlan {
    patient: String,
    study: String,
    birth: u32,
    sex: &'static str,
    date: String,
    report_id: u32,
    labels: Vec<(usize, bool)>,
    normal: bool,
    images: Vec<ImagePlan>,
    seed: u64,
}

/// One written PadChest image, for faults.
pub(crate) struct ImageRecord {
    pub image_id: String,
    pub study_id: String,
    pub path: String,
}

pub(crate) struct PadOut {
    pub counts: PadchestCounts,
    pub lesion_lines: Vec<LesionLine>,
    pub images: Vec<ImageRecord>,
}

fn digits(rng: &mut ChaCha8Rng, n: usize) -> String {
    let mut s = String::with_capacity(n);
    s.push(char::from(b'1' + rng.random_range(0..9u8)));
    for _ in 1..n {
        s.push(char::from(b'0' + rng.random_range(0..10u8)));
    }
    s
}

fn plan(cfg: &SynthConfig) -> Vec<StudyPlan> {
    let mut master = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5041_4443_4845);
    let mut plans: Vec<StudyPlan> = Vec::new();
    let mut n_images = 0;
    let mut used = HashSet::new();
    let mut report_id = 4_000_000 + master.random_range(0..100_000u32);
    while n_images < cfg.padchest_images {
        let patient = digits(&mut master, 36);
        let birth = 1920 + master.random_range(0..80u32);
        let sex = if master.random_bool(0.5) { "M" } else { "F" };
        let mut year = 2009 + master.random_range(0..8u32);
        for _ in 0..master.random_range(1..=3) {
            if n_images >= cfg.padchest_images {
                break;
            }
            let seed: u64 = master.random();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let study = loop {
                let s = digits(&mut rng, 38);
                if used.insert(s.clone()) {
                    break s;
                }
            };
            let normal = rng.random_bool(0.35);
            let mut labels = Vec::new();
            if !normal {
                for (i, l) in LABELS.iter().enumerate() {
                    if rng.random_bool(l.rate) {
                        labels.push((i, rng.random_bool(0.5)));
                    }
                }
            }
            let normal = normal || labels.is_empty();
            let n_img =
                if rng.random_bool(0.55) { 2 } else { 1 }.min(cfg.padchest_images - n_images);
            let mut images = Vec::new();
            let date = format!(
                "{year}{:02}{:02}",
                rng.random_range(1..13u32),
                rng.random_range(1..29u32)
            );
            year += rng.random_range(0..2u32);
            let portable = rng.random_bool(0.15);
            for k in 0..n_img {
                let (projection, view) = match k {
                    0 if portable => (
                        if rng.random_bool(0.5) {
                            "AP"
                        } else {
                            "AP_horizontal"
                        },
                        View::Frontal,
                    ),
                    0 => ("PA", View::Frontal),
                    _ => ("L", View::Lateral),
                };
                let rows = cfg.size;
                let cols = (((rows as f32 * rng.random_range(0.85..1.0f32)) as u32) & !1).max(32);
                let bits = [12u16, 12, 15, 16, 16][rng.random_range(0..5)];
                let image_id = format!(
                    "{}{}_{:02}-{:03}-{:03}.png",
                    &study,
                    &digits(&mut rng, 8),
                    rng.random_range(0..100u32),
                    rng.random_range(0..200u32),
                    rng.random_range(0..200u32)
                );
                images.push(ImagePlan {
                    image_id,
                    dir: rng.random_range(0..51u32),
                    projection,
                    view,
                    rows,
                    cols,
                    bits,
                    seed: rng.random(),
                });
            }
            n_images += images.len();
            report_id += 1 + rng.random_range(0..50u32);
            plans.push(StudyPlan {
                patient: patient.clone(),
                study,
                birth,
                sex,
                date,
                report_id,
                labels,
                normal,
                images,
                seed,
            });
        }
    }
    plans
}

fn py_list(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|s| format!("'{s}'")).collect();
    format!("[{}]", q.join(", "))
}

/// numpy's repr of a string array: no commas.
fn np_list(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|s| format!("'{s}'")).collect();
    format!("[{}]", q.join(" "))
}

fn finding_for(label: &Label, left: bool, zone: u8) -> Option<Finding> {
    let c = label.class?;
    Some(Finding {
        class: c,
        certainty: Certainty::Positive,
        left,
        bilateral: false,
        zone,
        severity: 1,
        variant: 1,
    })
}

struct StudyOut {
    rows: Vec<Vec<String>>,
    lesion_lines: Vec<LesionLine>,
    records: Vec<ImageRecord>,
}

fn write_study(out: &Path, p: &StudyPlan, index0: usize) -> Result<StudyOut, SynthError> {
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ 0xBEEF);
    let anat = Anatomy::random(&mut rng);
    let mut names = Vec::new();
    let mut cuis = Vec::new();
    let mut locs = Vec::new();
    let mut by_sentence = Vec::new();
    let mut spanish = Vec::new();
    let mut fnds = Vec::new();
    if p.normal {
        names.push("normal".to_string());
        by_sentence.push("['normal']".to_string());
        spanish.push("sin hallazgos radiologicos significativos".to_string());
    }
    for &(i, left) in &p.labels {
        let l = &LABELS[i];
        let zone = rng.random_range(0..3u8);
        names.push(l.name.to_string());
        if let Some(c) = l.cui {
            cuis.push(c.to_string());
        }
        let mut sent_locs = Vec::new();
        let mut es = l.spanish.to_string();
        if l.class.is_some()
            && l.class != Some(class::CARDIOMEGALY)
            && l.class != Some(class::ENLARGED_CM)
        {
            let (loc, es_side) = if left {
                ("loc left", "izquierdo")
            } else {
                ("loc right", "derecho")
            };
            sent_locs.push(loc.to_string());
            es = format!("{es} {es_side}");
            let (zl, zs) = [
                ("loc upper lobe", "en lobulo superior"),
                ("loc middle lobe", "en campo medio"),
                ("loc basal", "basal"),
            ][zone as usize];
            if matches!(
                l.class,
                Some(
                    class::PNEUMONIA
                        | class::CONSOLIDATION
                        | class::LUNG_LESION
                        | class::LUNG_OPACITY
                )
            ) {
                sent_locs.push(zl.to_string());
                es = format!("{es} {zs}");
            }
        }
        for s in &sent_locs {
            if !locs.contains(s) {
                locs.push(s.clone());
            }
        }
        let mut sent = vec![l.name.to_string()];
        sent.extend(sent_locs);
        by_sentence.push(py_list(&sent));
        spanish.push(es);
        if let Some(f) = finding_for(l, left, zone) {
            fnds.push(f);
        }
    }
    let report = format!("{} .", spanish.join(" . "));
    let loc_cuis: Vec<String> = locs
        .iter()
        .map(|l| match l.as_str() {
            "loc left" => "C0443246",
            "loc right" => "C0444532",
            "loc upper lobe" => "C1261074",
            "loc middle lobe" => "C0225757",
            _ => "C1282378",
        })
        .map(String::from)
        .collect();
    let mut rows = Vec::new();
    let mut lesion_lines = Vec::new();
    let mut records = Vec::new();
    for (k, img) in p.images.iter().enumerate() {
        let mut irng = ChaCha8Rng::seed_from_u64(img.seed);
        let lesions = crate::findings::lesions_for(&fnds, &anat, img.view, &mut irng);
        let r = render::render(
            &anat,
            img.view,
            &lesions,
            img.cols as usize,
            img.rows as usize,
            img.seed,
        );
        let max = ((1u32 << img.bits) - 1) as f32;
        // Use most of the bit depth, but leave head-room: a 16-bit image
        // whose useful range is a fifth of it needs its window.
        let span = max * irng.random_range(0.55..0.8f32);
        let offset = max * irng.random_range(0.02..0.12f32);
        let px = out::to_stored(&r.density, offset, span, img.bits);
        let rel = format!("{}/{}/{}", files::PADCHEST, img.dir, img.image_id);
        let path = out.join(&rel);
        let mut bytes: Vec<u8> = Vec::with_capacity(px.len() * 2);
        for v in &px {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        let mut buf = Vec::new();
        let enc = image::codecs::png::PngEncoder::new_with_quality(
            &mut buf,
            image::codecs::png::CompressionType::Fast,
            image::codecs::png::FilterType::Adaptive,
        );
        image::ImageEncoder::write_image(
            enc,
            &bytes,
            img.cols,
            img.rows,
            image::ExtendedColorType::L16,
        )
        .map_err(|e| SynthError::Encode {
            path: path.clone(),
            message: e.to_string(),
        })?;
        out::write(&path, &buf)?;
        let (wc, ww) = (offset + 0.45 * span, 0.8 * span);
        let view_dicom = match img.projection {
            "PA" => "POSTEROANTERIOR",
            "L" => "LATERAL",
            "AP" | "AP_horizontal" => "ANTEROPOSTERIOR",
            _ => "",
        };
        let modality = if irng.random_bool(0.6) { "CR" } else { "DX" };
        rows.push(vec![
            (index0 + k).to_string(),
            img.image_id.clone(),
            img.dir.to_string(),
            p.date.clone(),
            p.study.clone(),
            p.patient.clone(),
            format!("{}.0", p.birth),
            p.sex.to_string(),
            view_dicom.to_string(),
            img.projection.to_string(),
            "Manual review of DICOM fields".to_string(),
            "No".to_string(),
            modality.to_string(),
            if modality == "CR" {
                "PhilipsMedicalSystems"
            } else {
                "Imaging Dynamics Company Ltd."
            }
            .to_string(),
            "MONOCHROME2".to_string(),
            "0".to_string(),
            String::new(),
            "0.139".to_string(),
            img.bits.to_string(),
            format!("{:.0}", wc),
            format!("{:.0}", ww),
            img.rows.to_string(),
            img.cols.to_string(),
            irng.random_range(100..400u32).to_string(),
            irng.random_range(2..10u32).to_string(),
            irng.random_range(2000..9000u32).to_string(),
            irng.random_range(8..30u32).to_string(),
            String::new(),
            p.report_id.to_string(),
            report.clone(),
            if irng.random_bool(0.27) {
                "Physician"
            } else {
                "RNN_model"
            }
            .to_string(),
            py_list(&names),
            py_list(&locs),
            format!("[{}]", by_sentence.join(", ")),
            np_list(&cuis),
            np_list(&loc_cuis),
        ]);
        let recs = lesions
            .iter()
            .zip(&r.boxes)
            .filter_map(|(l, b)| {
                b.map(|bbox| LesionRecord {
                    source: "padchest",
                    image_id: img.image_id.clone(),
                    study_id: p.study.clone(),
                    class: CHEXPERT_CLASSES[l.class].0.to_string(),
                    bbox,
                    certainty: Certainty::Positive.name(),
                })
            })
            .collect();
        lesion_lines.push(LesionLine {
            source: "padchest",
            image_id: img.image_id.clone(),
            study_id: p.study.clone(),
            path: rel.clone(),
            width: img.cols,
            height: img.rows,
            lesions: recs,
        });
        records.push(ImageRecord {
            image_id: img.image_id.clone(),
            study_id: p.study.clone(),
            path: rel,
        });
    }
    Ok(StudyOut {
        rows,
        lesion_lines,
        records,
    })
}

pub(crate) fn generate(out: &Path, cfg: &SynthConfig) -> Result<PadOut, SynthError> {
    let plans = plan(cfg);
    let mut starts = Vec::with_capacity(plans.len());
    let mut acc = 0;
    for p in &plans {
        starts.push(acc);
        acc += p.images.len();
    }
    let results: Vec<Result<StudyOut, SynthError>> = plans
        .par_iter()
        .zip(starts.par_iter())
        .map(|(p, &s)| write_study(out, p, s))
        .collect();
    let mut counts = PadchestCounts {
        patients: plans
            .iter()
            .map(|p| &p.patient)
            .collect::<HashSet<_>>()
            .len(),
        studies: plans.len(),
        ..Default::default()
    };
    let mut rows = Vec::new();
    let mut lesion_lines = Vec::new();
    let mut images = Vec::new();
    for (p, r) in plans.iter().zip(results) {
        let r = r?;
        for img in &p.images {
            *counts
                .images_per_projection
                .entry(img.projection.into())
                .or_insert(0) += 1;
            *counts
                .images_per_bits_stored
                .entry(img.bits.to_string())
                .or_insert(0) += 1;
            let mut ls: BTreeMap<&str, ()> = BTreeMap::new();
            if p.normal {
                ls.insert("normal", ());
            }
            for &(i, _) in &p.labels {
                ls.insert(LABELS[i].name, ());
            }
            for l in ls.keys() {
                *counts.labels.entry(l.to_string()).or_insert(0) += 1;
            }
        }
        rows.extend(r.rows);
        lesion_lines.extend(r.lesion_lines);
        images.extend(r.records);
    }
    counts.images = rows.len();
    if cfg.padchest_images > 0 {
        let text = out::csv_text(&COLUMNS, &rows)?;
        out::write(
            &out.join(files::PADCHEST).join(files::PADCHEST_CSV),
            &out::gzip(text.as_bytes()),
        )?;
    }
    Ok(PadOut {
        counts,
        lesion_lines,
        images,
    })
}
