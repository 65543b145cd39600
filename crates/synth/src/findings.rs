//! Findings: what a study shows, how the report says it, and how it is drawn.
//!
//! One [`Finding`] per mentioned CheXpert class is the single source for the
//! label CSVs, the report sentences and the lesions, so the three can never
//! disagree. Report templates mark entity phrases with `{...}`; the markers
//! are stripped when the report is written and become NER spans in the
//! sidecar.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::render::{Anatomy, Lesion, Shape, View};

/// Index of each class in [`schemas::CHEXPERT_CLASSES`] (checked by a test).
pub(crate) mod class {
    pub const ATELECTASIS: usize = 0;
    pub const CARDIOMEGALY: usize = 1;
    pub const CONSOLIDATION: usize = 2;
    pub const EDEMA: usize = 3;
    pub const ENLARGED_CM: usize = 4;
    pub const FRACTURE: usize = 5;
    pub const LUNG_LESION: usize = 6;
    pub const LUNG_OPACITY: usize = 7;
    pub const NO_FINDING: usize = 8;
    pub const EFFUSION: usize = 9;
    pub const PLEURAL_OTHER: usize = 10;
    pub const PNEUMONIA: usize = 11;
    pub const PNEUMOTHORAX: usize = 12;
    pub const SUPPORT_DEVICES: usize = 13;
}
use class::*;

/// How a class is mentioned; an unmentioned class has no [`Finding`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Certainty {
    Positive,
    Uncertain,
    Negative,
}

impl Certainty {
    /// The CheXpert CSV value.
    pub fn label(self) -> &'static str {
        match self {
            Certainty::Positive => "1.0",
            Certainty::Uncertain => "-1.0",
            Certainty::Negative => "0.0",
        }
    }
    /// Name used in lesions.jsonl.
    pub fn name(self) -> &'static str {
        match self {
            Certainty::Positive => "positive",
            Certainty::Uncertain => "uncertain",
            Certainty::Negative => "negative",
        }
    }
}

/// One mentioned class with where and how much.
#[derive(Clone, Debug)]
pub(crate) struct Finding {
    pub class: usize,
    pub certainty: Certainty,
    /// Patient's left (true) or right.
    pub left: bool,
    pub bilateral: bool,
    /// 0 upper, 1 mid, 2 lower lung zone.
    pub zone: u8,
    /// 0 small/mild, 1 moderate, 2 large/severe.
    pub severity: u8,
    /// Template or device choice.
    pub variant: u8,
}

/// Per-class chance of (positive, uncertain, negated) mention in an abnormal
/// study. Chosen so the main classes land at 10–40% positive over a world.
const RATES: [(f64, f64, f64); 14] = [
    (0.22, 0.06, 0.05), // Atelectasis
    (0.24, 0.05, 0.2),  // Cardiomegaly
    (0.12, 0.06, 0.3),  // Consolidation
    (0.16, 0.06, 0.2),  // Edema
    (0.07, 0.04, 0.08), // Enlarged Cardiomediastinum
    (0.05, 0.02, 0.05), // Fracture
    (0.07, 0.03, 0.03), // Lung Lesion
    (0.22, 0.04, 0.04), // Lung Opacity
    (0.0, 0.0, 0.0),    // No Finding (derived)
    (0.3, 0.07, 0.4),   // Pleural Effusion
    (0.04, 0.01, 0.0),  // Pleural Other
    (0.08, 0.12, 0.15), // Pneumonia
    (0.08, 0.03, 0.45), // Pneumothorax
    (0.32, 0.0, 0.0),   // Support Devices
];

/// Draws the findings of one study. About a quarter of studies are normal:
/// only negated mentions, and "No Finding" positive.
pub(crate) fn draw_findings(rng: &mut ChaCha8Rng) -> Vec<Finding> {
    let normal = rng.random_bool(0.25);
    let mut out = Vec::new();
    for (c, &(p, u, n)) in RATES.iter().enumerate() {
        if c == NO_FINDING {
            continue;
        }
        let r: f64 = rng.random();
        let certainty = if normal {
            // Normal studies still mention the classic negatives.
            if r < n * 1.3 {
                Some(Certainty::Negative)
            } else {
                None
            }
        } else if r < p {
            Some(Certainty::Positive)
        } else if r < p + u {
            Some(Certainty::Uncertain)
        } else if r < p + u + n {
            Some(Certainty::Negative)
        } else {
            None
        };
        // Devices are only ever reported as present.
        let certainty = match certainty {
            Some(Certainty::Negative) if c == SUPPORT_DEVICES || c == PLEURAL_OTHER => None,
            Some(Certainty::Positive) if normal && c == SUPPORT_DEVICES => None,
            x => x,
        };
        let Some(certainty) = certainty else { continue };
        out.push(Finding {
            class: c,
            certainty,
            left: rng.random_bool(0.5),
            bilateral: rng.random_bool(0.25),
            zone: rng.random_range(0..3),
            severity: rng.random_range(0..3),
            variant: rng.random_range(0..4),
        });
    }
    if normal && rng.random_bool(0.2) {
        // A device does not make a study abnormal (CheXpert's No Finding rule).
        out.push(Finding {
            class: SUPPORT_DEVICES,
            certainty: Certainty::Positive,
            left: false,
            bilateral: false,
            zone: 0,
            severity: 0,
            variant: rng.random_range(0..4),
        });
    }
    out
}

/// The CheXpert row: 14 values, empty where unmentioned. "No Finding" is 1.0
/// when nothing but devices is positive or uncertain, as the labeler does.
pub(crate) fn chexpert_row(f: &[Finding]) -> [&'static str; 14] {
    let mut row = [""; 14];
    for x in f {
        row[x.class] = x.certainty.label();
    }
    let abnormal = f
        .iter()
        .any(|x| x.class != SUPPORT_DEVICES && x.certainty != Certainty::Negative);
    if !abnormal {
        row[NO_FINDING] = "1.0";
    }
    row
}

fn side(f: &Finding) -> &'static str {
    if f.left { "left" } else { "right" }
}

fn sev(f: &Finding, words: [&'static str; 3]) -> &'static str {
    words[f.severity as usize]
}

fn zone_place(f: &Finding) -> String {
    let s = side(f);
    match f.zone {
        0 => format!("{s} upper lobe"),
        1 => {
            if f.left {
                "lingula".to_string()
            } else {
                "right middle lobe".to_string()
            }
        }
        _ => format!("{s} lower lobe"),
    }
}

fn zone_region(f: &Finding) -> String {
    let s = side(f);
    match f.zone {
        0 => format!("{s} upper lung"),
        1 => format!("{s} mid lung"),
        _ => format!("{s} lung base"),
    }
}

/// Capitalises the first letter, looking through a leading `{` marker.
fn cap(s: &str) -> String {
    let (lead, rest) = if let Some(r) = s.strip_prefix('{') {
        ("{", r)
    } else {
        ("", s)
    };
    let mut c = rest.chars();
    match c.next() {
        Some(f) => format!("{lead}{}{}", f.to_uppercase(), c.as_str()),
        None => s.to_string(),
    }
}

/// A sentence for a positive or uncertain finding, entities in braces.
pub(crate) fn sentence(f: &Finding) -> String {
    let v = f.variant % 2;
    let pos = f.certainty == Certainty::Positive;
    let s = side(f);

    match (f.class, pos, v) {
        (ATELECTASIS, true, 0) if f.bilateral => format!(
            "{} {{bibasilar atelectasis}}.",
            cap(sev(f, ["mild", "moderate", "extensive"]))
        ),
        (ATELECTASIS, true, _) => format!("{{Plate-like atelectasis}} at the {{{s} lung base}}."),
        (ATELECTASIS, false, 0) => {
            format!("Possible {{subsegmental atelectasis}} at the {{{s} base}}.")
        }
        (ATELECTASIS, false, _) => {
            format!("{{Minimal atelectasis}} at the {{{s} lung base}} is suspected.")
        }
        (CARDIOMEGALY, true, 0) => format!(
            "{}.",
            cap(&format!(
                "{{{} cardiomegaly}}",
                sev(f, ["mild", "moderate", "severe"])
            ))
        ),
        (CARDIOMEGALY, true, _) => format!(
            "The {{heart}} is {{{} enlarged}}.",
            sev(f, ["mildly", "moderately", "markedly"])
        ),
        (CARDIOMEGALY, false, 0) => "Possible {mild cardiomegaly}.".to_string(),
        (CARDIOMEGALY, false, _) => "The {heart} may be {mildly enlarged}.".to_string(),
        (CONSOLIDATION, true, 0) => {
            format!("{{Focal consolidation}} in the {{{}}}.", zone_place(f))
        }
        (CONSOLIDATION, true, _) => {
            format!("Dense {{consolidation}} in the {{{}}}.", zone_region(f))
        }
        (CONSOLIDATION, false, 0) => format!(
            "Possible {{early consolidation}} in the {{{}}}.",
            zone_place(f)
        ),
        (CONSOLIDATION, false, _) => format!(
            "{{Consolidation}} in the {{{}}} cannot be excluded.",
            zone_region(f)
        ),
        (EDEMA, true, 0) => format!(
            "{}.",
            cap(&format!(
                "{{{} pulmonary edema}}",
                sev(f, ["mild", "moderate", "severe"])
            ))
        ),
        (EDEMA, true, _) => format!(
            "{{Perihilar haziness}} consistent with {{{} interstitial edema}}.",
            sev(f, ["mild", "moderate", "severe"])
        ),
        (EDEMA, false, 0) => "Possible {mild pulmonary edema}.".to_string(),
        (EDEMA, false, _) => "{Mild interstitial edema} cannot be excluded.".to_string(),
        (ENLARGED_CM, true, 0) => "The {cardiomediastinal silhouette} is {widened}.".to_string(),
        (ENLARGED_CM, true, _) => "{Mediastinal widening} is present.".to_string(),
        (ENLARGED_CM, false, _) => "The {mediastinum} may be {slightly widened}.".to_string(),
        (FRACTURE, true, 0) => format!(
            "{{Acute fracture}} of the {{{s} {}th rib}}.",
            5 + f.severity
        ),
        (FRACTURE, true, _) => format!(
            "{{Displaced fracture}} of the {{{s} lateral {}th rib}}.",
            6 + f.severity
        ),
        (FRACTURE, false, _) => format!(
            "Possible {{nondisplaced fracture}} of the {{{s} {}th rib}}.",
            6 + f.severity
        ),
        (LUNG_LESION, true, 0) => format!(
            "A {{{}.{} cm nodule}} projects over the {{{}}}.",
            1 + f.severity / 2,
            2 + f.variant * 2,
            zone_region(f)
        ),
        (LUNG_LESION, true, _) => format!("{{Spiculated mass}} in the {{{}}}.", zone_place(f)),
        (LUNG_LESION, false, _) => {
            format!("Possible {{small nodule}} in the {{{}}}.", zone_region(f))
        }
        (LUNG_OPACITY, true, 0) => format!("{{Patchy opacity}} in the {{{}}}.", zone_region(f)),
        (LUNG_OPACITY, true, _) => format!("Hazy {{opacities}} in the {{{}}}.", zone_region(f)),
        (LUNG_OPACITY, false, _) => {
            format!("Possible {{subtle opacity}} in the {{{}}}.", zone_region(f))
        }
        (EFFUSION, true, _) if f.bilateral => format!(
            "{}.",
            cap(&format!(
                "{{{} bilateral pleural effusions}}",
                sev(f, ["small", "moderate", "large"])
            ))
        ),
        (EFFUSION, true, 0) => format!(
            "{}.",
            cap(&format!(
                "{{{} {s} pleural effusion}}",
                sev(f, ["small", "moderate", "large"])
            ))
        ),
        (EFFUSION, true, _) => format!(
            "There is a {{{} {s} pleural effusion}}.",
            sev(f, ["small", "moderate", "large"])
        ),
        (EFFUSION, false, 0) => format!("Possible {{small {s} pleural effusion}}."),
        (EFFUSION, false, _) => format!(
            "{{Blunting}} of the {{{s} costophrenic angle}} may reflect a {{small pleural effusion}}."
        ),
        (PLEURAL_OTHER, true, _) => {
            format!("{{Pleural thickening}} along the {{{s} lateral chest wall}}.")
        }
        (PLEURAL_OTHER, false, _) => {
            format!("Possible {{pleural thickening}} along the {{{s} chest wall}}.")
        }
        (PNEUMONIA, true, 0) => format!("{}.", cap(&format!("{{{} pneumonia}}", zone_place(f)))),
        (PNEUMONIA, true, _) => format!(
            "Findings consistent with {{pneumonia}} in the {{{}}}.",
            zone_place(f)
        ),
        (PNEUMONIA, false, 0) => {
            format!("Possible {{early pneumonia}} in the {{{}}}.", zone_place(f))
        }
        (PNEUMONIA, false, _) => format!(
            "{{Pneumonia}} in the {{{}}} cannot be excluded.",
            zone_region(f)
        ),
        (PNEUMOTHORAX, true, 0) => format!(
            "{}.",
            cap(&format!(
                "{{{} {s} apical pneumothorax}}",
                sev(f, ["small", "moderate", "large"])
            ))
        ),
        (PNEUMOTHORAX, true, _) => format!(
            "There is a {{{} {s} pneumothorax}}.",
            sev(f, ["small", "moderate", "large"])
        ),
        (PNEUMOTHORAX, false, _) => format!("Possible {{tiny {s} apical pneumothorax}}."),
        (SUPPORT_DEVICES, _, _) => match f.variant {
            0 => format!(
                "{{Endotracheal tube}} terminates {} cm above the {{carina}}.",
                3 + f.severity
            ),
            1 => "{Right internal jugular catheter} terminates in the {mid SVC}.".to_string(),
            2 => "{Enteric tube} courses below the {diaphragm} with its tip in the {stomach}."
                .to_string(),
            _ => "{Left PICC} terminates in the {low SVC}.".to_string(),
        },
        _ => String::new(),
    }
}

/// The noun phrase used in a combined negation ("No X, Y or Z."), or a
/// standalone negative sentence for classes that read better alone.
pub(crate) enum Negation {
    Phrase(&'static str),
    Sentence(&'static str),
}

pub(crate) fn negation(f: &Finding) -> Negation {
    match f.class {
        ATELECTASIS => Negation::Phrase("atelectasis"),
        CARDIOMEGALY => {
            if f.variant.is_multiple_of(2) {
                Negation::Sentence("{Heart size} is normal.")
            } else {
                Negation::Sentence("No {cardiomegaly}.")
            }
        }
        CONSOLIDATION => Negation::Phrase("focal consolidation"),
        EDEMA => Negation::Phrase("pulmonary edema"),
        ENLARGED_CM => Negation::Sentence("The {mediastinal contours} are normal."),
        FRACTURE => Negation::Sentence("No {acute displaced rib fracture} is seen."),
        LUNG_LESION => Negation::Phrase("suspicious pulmonary nodules"),
        LUNG_OPACITY => Negation::Phrase("focal airspace opacity"),
        EFFUSION => Negation::Phrase("pleural effusion"),
        PNEUMONIA => Negation::Sentence("No radiographic evidence of {pneumonia}."),
        PNEUMOTHORAX => Negation::Phrase("pneumothorax"),
        _ => Negation::Phrase(""),
    }
}

/// Builds the drawable lesions of a study's findings for one view. Uncertain
/// findings are drawn faint; negated ones not at all.
pub(crate) fn lesions_for(
    findings: &[Finding],
    anat: &Anatomy,
    view: View,
    rng: &mut ChaCha8Rng,
) -> Vec<Lesion> {
    let mut out = Vec::new();
    for f in findings {
        let amp = match f.certainty {
            Certainty::Positive => 1.0,
            Certainty::Uncertain => 0.45,
            Certainty::Negative => continue,
        };
        let sevk = 0.8 + 0.2 * f.severity as f32;
        let j = |rng: &mut ChaCha8Rng, s: f32| rng.random_range(-s..s);
        // Centre of a lung zone, in normalised image coordinates.
        let zone_centre = |rng: &mut ChaCha8Rng| -> (f32, f32) {
            match view {
                View::Frontal => {
                    let lg = if f.left { &anat.left } else { &anat.right };
                    let dy = [-0.5, 0.05, 0.5][f.zone as usize];
                    // Lateral half of the lung, away from the heart.
                    let s = if f.left { 1.0 } else { -1.0 };
                    (
                        lg.cx + s * lg.rx * 0.25 + j(rng, 0.02),
                        lg.cy + dy * lg.ry + j(rng, 0.02),
                    )
                }
                View::Lateral => {
                    let lg = &anat.lateral;
                    let dy = [-0.5, 0.0, 0.45][f.zone as usize];
                    (
                        1.0 - lg.cx + 0.1 + j(rng, 0.03),
                        lg.cy + dy * lg.ry + j(rng, 0.02),
                    )
                }
            }
        };
        let mut push = |shape: Shape| {
            out.push(Lesion {
                class: f.class,
                shape,
                amp,
            })
        };
        match f.class {
            EFFUSION => {
                let level = 0.2 + 0.12 * f.severity as f32 + j(rng, 0.03);
                if f.bilateral && view == View::Frontal {
                    push(Shape::Effusion { left: true, level });
                    push(Shape::Effusion {
                        left: false,
                        level: level * 0.9,
                    });
                } else {
                    push(Shape::Effusion {
                        left: f.left,
                        level,
                    });
                }
            }
            CARDIOMEGALY => push(Shape::Cardiomegaly {
                scale: 1.25 + 0.1 * f.severity as f32,
            }),
            ENLARGED_CM if view == View::Frontal => push(Shape::Mediastinum { scale: 1.7 }),
            PNEUMOTHORAX if view == View::Frontal => push(Shape::Pneumothorax {
                left: f.left,
                depth: 0.15 + 0.07 * f.severity as f32,
            }),
            CONSOLIDATION | PNEUMONIA => {
                let (cx, cy) = zone_centre(rng);
                let r = 0.055 * sevk;
                push(Shape::Blob {
                    cx,
                    cy,
                    rx: r,
                    ry: r * 1.2,
                    peak: 0.3,
                    sharp: 0.3,
                    patchy: 0.6,
                });
            }
            LUNG_OPACITY => {
                let (cx, cy) = zone_centre(rng);
                let r = 0.06 * sevk;
                push(Shape::Blob {
                    cx,
                    cy,
                    rx: r * 1.1,
                    ry: r,
                    peak: 0.2,
                    sharp: 0.1,
                    patchy: 1.0,
                });
            }
            LUNG_LESION => {
                let (cx, cy) = zone_centre(rng);
                let r = if f.variant % 2 == 0 { 0.022 } else { 0.04 };
                push(Shape::Blob {
                    cx,
                    cy,
                    rx: r,
                    ry: r,
                    peak: 0.35,
                    sharp: 0.8,
                    patchy: 0.15,
                });
            }
            EDEMA => push(Shape::Edema {
                spread: 0.09 + 0.02 * f.severity as f32,
            }),
            ATELECTASIS => {
                let (cx, cy) = match view {
                    View::Frontal => {
                        let lg = if f.left { &anat.left } else { &anat.right };
                        (lg.cx, lg.cy + 0.55 * lg.ry)
                    }
                    View::Lateral => (
                        1.0 - anat.lateral.cx,
                        anat.lateral.cy + 0.5 * anat.lateral.ry,
                    ),
                };
                let half = 0.05 + j(rng, 0.01);
                push(Shape::Band {
                    a: (cx - half, cy + 0.015),
                    b: (cx + half, cy - 0.02 + j(rng, 0.01)),
                    half: 0.012 + 0.003 * f.severity as f32,
                    peak: 0.32,
                });
            }
            FRACTURE if view == View::Frontal => {
                // A callus on a lateral rib: a short bright oblique band.
                let lg = if f.left { &anat.left } else { &anat.right };
                let s = if f.left { 1.0 } else { -1.0 };
                let (cx, cy) = (lg.cx + s * lg.rx * 0.8, lg.cy + j(rng, 0.1));
                push(Shape::Band {
                    a: (cx - 0.015, cy - 0.008),
                    b: (cx + 0.015, cy + 0.008),
                    half: 0.01,
                    peak: 0.3,
                });
            }
            PLEURAL_OTHER if view == View::Frontal => push(Shape::Thickening {
                left: f.left,
                thick: 0.08,
            }),
            SUPPORT_DEVICES => {
                let w = 0.006;
                let pts: Vec<(f32, f32)> = match (f.variant, view) {
                    (0, View::Frontal) => vec![(0.5, 0.0), (0.5, 0.27 + 0.01 * f.severity as f32)],
                    (1, View::Frontal) => {
                        vec![(0.3, 0.08), (0.42, 0.18), (0.47, 0.24), (0.475, 0.34)]
                    }
                    (2, View::Frontal) => vec![(0.5, 0.0), (0.51, 0.45), (0.58, 0.74), (0.66, 0.8)],
                    (_, View::Frontal) => {
                        vec![(0.98, 0.26), (0.75, 0.19), (0.55, 0.21), (0.48, 0.34)]
                    }
                    (0, View::Lateral) => vec![(0.47, 0.0), (0.5, 0.28)],
                    (2, View::Lateral) => vec![(0.52, 0.0), (0.6, 0.5), (0.5, 0.8)],
                    (_, View::Lateral) => vec![(0.45, 0.12), (0.45, 0.35)],
                };
                push(Shape::Tube {
                    points: pts,
                    width: w,
                });
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_indices_match_schemas_table() {
        let names: Vec<&str> = schemas::CHEXPERT_CLASSES.iter().map(|c| c.0).collect();
        assert_eq!(names[ATELECTASIS], "Atelectasis");
        assert_eq!(names[NO_FINDING], "No Finding");
        assert_eq!(names[EFFUSION], "Pleural Effusion");
        assert_eq!(names[PNEUMOTHORAX], "Pneumothorax");
        assert_eq!(names[SUPPORT_DEVICES], "Support Devices");
        assert_eq!(names[ENLARGED_CM], "Enlarged Cardiomediastinum");
        assert_eq!(names[LUNG_OPACITY], "Lung Opacity");
    }
}
