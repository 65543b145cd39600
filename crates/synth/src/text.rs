//! English free-text reports in the MIMIC-CXR layout.
//!
//! The layout follows the real files: an indented `FINAL REPORT` first line,
//! ` HEADER:` lines, every line starting with one space and wrapped before 80
//! columns, PHI as `___`, optional addenda above a line of underscores. Some
//! studies lack FINDINGS, some IMPRESSION, a few both (free paragraphs, where
//! the section parser falls back to the last paragraph), so the ingest
//! section parser meets every case it has to handle.

use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

use crate::findings::{Certainty, Finding, Negation, class, negation, sentence};

/// A written report and the entity phrases it contains, in order of
/// appearance within the FINDINGS/IMPRESSION (or last-paragraph) text.
pub(crate) struct Report {
    pub text: String,
    pub entities: Vec<String>,
    /// Which layout was used, for world.json.
    pub layout: &'static str,
}

/// Removes `{`/`}` entity markers, collecting the marked phrases.
pub(crate) fn strip_marks(s: &str, entities: &mut Vec<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut cur: Option<String> = None;
    for ch in s.chars() {
        match ch {
            '{' => cur = Some(String::new()),
            '}' => {
                if let Some(e) = cur.take() {
                    entities.push(e);
                }
            }
            c => {
                out.push(c);
                if let Some(e) = cur.as_mut() {
                    e.push(c);
                }
            }
        }
    }
    out
}

/// Greedy word wrap: every line starts with one space and is at most 78
/// characters long. Double spaces between sentences survive inside lines,
/// as in the real reports.
pub(crate) fn wrap(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::from(" ");
    let mut pending = 0usize;
    for word in text.split(' ') {
        if word.is_empty() {
            pending += 1;
            continue;
        }
        let mut sep = if line.len() > 1 { 1 + pending } else { 0 };
        if line.len() > 1 && line.chars().count() + sep + word.chars().count() > 78 {
            lines.push(std::mem::replace(&mut line, String::from(" ")));
            sep = 0;
        }
        line.extend(std::iter::repeat_n(' ', sep));
        line.push_str(word);
        pending = 0;
    }
    if line.len() > 1 {
        lines.push(line);
    }
    lines
}

const INDICATIONS: &[&str] = &[
    "___ year old woman with shortness of breath.",
    "___M with cough and fever  // eval for infiltrate",
    "History: ___F with chest pain",
    "___ year old man s/p line placement  // position?",
    "___ with hypoxia, evaluate for interval change",
    "Dyspnea on exertion.",
];

/// Writes the report for a study. `portable` picks the AP wording.
pub(crate) fn build_report(findings: &[Finding], portable: bool, rng: &mut ChaCha8Rng) -> Report {
    let mut pos_sentences = Vec::new();
    let mut neg_phrases = Vec::new();
    let mut neg_sentences = Vec::new();
    // Devices first, then lungs, pleura, heart, bones: the usual reading order.
    let order = [
        class::SUPPORT_DEVICES,
        class::CONSOLIDATION,
        class::PNEUMONIA,
        class::LUNG_OPACITY,
        class::LUNG_LESION,
        class::ATELECTASIS,
        class::EDEMA,
        class::EFFUSION,
        class::PLEURAL_OTHER,
        class::PNEUMOTHORAX,
        class::CARDIOMEGALY,
        class::ENLARGED_CM,
        class::FRACTURE,
    ];
    for c in order {
        for f in findings.iter().filter(|f| f.class == c) {
            match f.certainty {
                Certainty::Negative => match negation(f) {
                    Negation::Phrase(p) => neg_phrases.push(p),
                    Negation::Sentence(s) => neg_sentences.push(s.to_string()),
                },
                _ => pos_sentences.push(sentence(f)),
            }
        }
    }
    let abnormal = findings
        .iter()
        .any(|f| f.class != class::SUPPORT_DEVICES && f.certainty != Certainty::Negative);

    // Negations, grouped three at a time: "No {a}, {b}, or {c}."
    let mut negs = Vec::new();
    for chunk in neg_phrases.chunks(3) {
        let items: Vec<String> = chunk.iter().map(|p| format!("{{{p}}}")).collect();
        let list = match items.len() {
            1 => items[0].clone(),
            2 => format!("{} or {}", items[0], items[1]),
            _ => format!("{}, {}, or {}", items[0], items[1], items[2]),
        };
        let lead = ["No ", "There is no ", "No evidence of "][rng.random_range(0..3)];
        negs.push(format!("{lead}{list}."));
    }
    negs.extend(neg_sentences);

    let fillers = [
        "Lung volumes are low.",
        "The lungs are well expanded.",
        "Hilar contours are unremarkable.",
        "Degenerative changes of the thoracic spine.",
        "Surgical clips project over the upper abdomen.",
    ];
    let mut findings_text: Vec<String> = pos_sentences.clone();
    findings_text.extend(negs.iter().cloned());
    if rng.random_bool(0.5) {
        findings_text.push(
            fillers
                .choose(rng)
                .map(|s| s.to_string())
                .unwrap_or_default(),
        );
    }
    let impression: Vec<String> = if !abnormal {
        let mut v = vec!["No acute cardiopulmonary process.".to_string()];
        v.extend(pos_sentences.iter().cloned());
        v
    } else if pos_sentences.len() > 1 {
        pos_sentences
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{}. {s}", i + 1))
            .collect()
    } else {
        pos_sentences.clone()
    };

    let r: f64 = rng.random();
    let layout = if r < 0.72 {
        "findings+impression"
    } else if r < 0.84 {
        "impression-only"
    } else if r < 0.94 {
        "findings-only"
    } else {
        "free-text"
    };
    let addendum = rng.random_bool(0.05);

    let mut lines: Vec<String> = vec![format!("{:>45}", "FINAL REPORT")];
    if addendum {
        lines.extend(wrap(
            "ADDENDUM  Findings were discussed with Dr. ___ by Dr. ___ on the telephone on ___ at ___, ___ minutes after discovery.",
        ));
        lines.push(" ".into());
        lines.push(format!(" {}", "_".repeat(78)));
        lines.push(" ".into());
        lines.push(format!("{:>45}", "FINAL REPORT"));
    }
    let (exam, tech) = if portable {
        ("CHEST (PORTABLE AP)", "Single frontal view of the chest")
    } else {
        ("CHEST (PA AND LAT)", "Chest PA and lateral")
    };
    let comparison = ["___", "None.", "Chest radiograph from ___."][rng.random_range(0..3)];
    let indication = INDICATIONS[rng.random_range(0..INDICATIONS.len())];
    let mut entities = Vec::new();
    let section =
        |lines: &mut Vec<String>, header: &str, body: &[String], entities: &mut Vec<String>| {
            lines.push(format!(" {header}: "));
            lines.push(" ".into());
            // Numbered impressions put each item on its own line, as radiologists do.
            if body.first().is_some_and(|s| s.starts_with("1. ")) {
                for item in body {
                    lines.extend(wrap(&strip_marks(item, entities)));
                }
            } else {
                lines.extend(wrap(&strip_marks(&body.join("  "), entities)));
            }
            lines.push(" ".into());
        };
    match layout {
        "free-text" => {
            lines.push(format!(
                " {} OF ___",
                if portable {
                    "PORTABLE CHEST"
                } else {
                    "CHEST RADIOGRAPHS"
                }
            ));
            lines.push(" ".into());
            lines.extend(wrap(&format!("COMPARISON:  {comparison}")));
            lines.push(" ".into());
            lines.extend(wrap(&format!("CLINICAL HISTORY:  {indication}")));
            lines.push(" ".into());
            // Every finding in the last paragraph, which the parser falls back to.
            let mut all = findings_text.clone();
            if !abnormal {
                all.push("No acute cardiopulmonary process.".into());
            }
            let text = strip_marks(&all.join("  "), &mut entities);
            lines.extend(wrap(&text));
        }
        _ => {
            lines.extend(wrap(&format!("EXAMINATION:  {exam}")));
            lines.push(" ".into());
            lines.extend(wrap(&format!("INDICATION:  {indication}")));
            lines.push(" ".into());
            lines.extend(wrap(&format!("TECHNIQUE:  {tech}")));
            lines.push(" ".into());
            lines.extend(wrap(&format!("COMPARISON:  {comparison}")));
            lines.push(" ".into());
            match layout {
                "findings+impression" => {
                    section(&mut lines, "FINDINGS", &findings_text, &mut entities);
                    section(&mut lines, "IMPRESSION", &impression, &mut entities);
                }
                "impression-only" => {
                    let mut all = pos_sentences.clone();
                    if !abnormal {
                        all.insert(0, "No acute cardiopulmonary process.".into());
                    }
                    all.extend(negs.iter().cloned());
                    section(&mut lines, "IMPRESSION", &all, &mut entities);
                }
                _ => {
                    let mut all = findings_text.clone();
                    if !abnormal {
                        all.push("No acute cardiopulmonary process.".into());
                    }
                    section(&mut lines, "FINDINGS", &all, &mut entities);
                }
            }
        }
    }
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    let mut text = lines.join("\n");
    text.push('\n');
    Report {
        text,
        entities,
        layout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_keeps_lines_short_and_indented() {
        let t = "word ".repeat(60);
        for l in wrap(&t) {
            assert!(l.starts_with(' ') && !l.starts_with("  "));
            assert!(l.chars().count() < 80);
        }
    }

    #[test]
    fn strip_marks_collects_entities() {
        let mut e = Vec::new();
        let s = strip_marks("No {pleural effusion} or {pneumothorax}.", &mut e);
        assert_eq!(s, "No pleural effusion or pneumothorax.");
        assert_eq!(e, vec!["pleural effusion", "pneumothorax"]);
    }
}
