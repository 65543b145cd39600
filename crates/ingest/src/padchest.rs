//! PadChest as released: unpaired rows (its reports are Spanish), 16-bit PNGs.
//!
//! Reads `PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv[.gz]` and the
//! images at `<root>/<ImageDir>/<ImageID>`. PadChest has no official split, so
//! one is assigned per patient from a hash of the patient id and a seed:
//! deterministic, and leak-free because every image of a patient lands in the
//! same split.

use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use schemas::{Manifest, Reject, Source, Stage};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::csvio::{self, CsvError, Table};
use crate::mimic::view_kept;
use crate::prepare;
use crate::shard::{self, Outcome, Planned, Row, RunInfo, ShardError, ShardOptions};

/// File stem of the PadChest index CSV.
pub const PADCHEST_CSV: &str = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19";

/// Everything a PadChest run needs.
#[derive(Debug, Clone, Serialize)]
pub struct PadchestOptions {
    /// Folder holding the CSV and the numbered image folders.
    pub root: PathBuf,
    /// Projections kept (`Projection` values); empty keeps all.
    pub projections: Vec<String>,
    /// Fractions of patients in train and validate; the rest is test.
    pub split_fractions: (f64, f64),
    /// Seed of the patient-level split.
    pub split_seed: u64,
    /// Image policy (`png_window` applies).
    pub image: schemas::ImagePolicy,
    /// Shard sizes and strictness.
    pub shards: ShardOptions,
    /// A CSV that ends early (truncated gzip) is recorded as one reject at
    /// its break instead of stopping the run. Recorded only when set.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_truncated_csv: bool,
}

/// Why a PadChest run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum PadchestError {
    /// The index CSV is missing or unusable.
    #[error(transparent)]
    Csv(#[from] CsvError),
    /// Writing shards failed.
    #[error(transparent)]
    Shard(#[from] ShardError),
}

/// Parses a label list as PadChest writes it: Python-list text
/// (`['a', 'b']`), numpy-style text without commas (`['C1' 'C2']`), `[]`, or
/// an empty cell. Never substring matching: `"['pleural effusion']"` holds one
/// label, not `effusion`.
pub fn parse_label_list(text: &str) -> Result<Vec<String>, String> {
    let t = text.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("nan") {
        return Ok(Vec::new());
    }
    let inner = t
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| format!("label list {t:?} is not enclosed in [ ]"))?;
    let mut labels = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let Some(quote) = chars.next() else { break };
        if quote != '\'' && quote != '"' {
            return Err(format!(
                "label list {t:?}: expected a quoted label, found {quote:?}"
            ));
        }
        let mut label = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some(c) => label.push(c),
                    None => return Err(format!("label list {t:?}: dangling escape")),
                },
                Some(c) if c == quote => break,
                Some(c) => label.push(c),
                None => return Err(format!("label list {t:?}: unterminated quote")),
            }
        }
        let label = label.trim();
        if !label.is_empty() {
            labels.push(label.to_string());
        }
    }
    Ok(labels)
}

/// The split of a patient: a hash of (seed, patient id) mapped to [0, 1).
pub fn patient_split(patient: &str, seed: u64, fractions: (f64, f64)) -> &'static str {
    let digest = Sha256::new()
        .chain_update(seed.to_le_bytes())
        .chain_update(patient.as_bytes())
        .finalize();
    let bits = u64::from_le_bytes(digest[..8].try_into().expect("sha256 has 32 bytes"));
    let u = (bits >> 11) as f64 / (1u64 << 53) as f64;
    if u < fractions.0 {
        "train"
    } else if u < fractions.0 + fractions.1 {
        "validate"
    } else {
        "test"
    }
}

#[derive(Debug, Clone)]
struct Item {
    image_id: String,
    image_path: PathBuf,
    study: String,
    patient: String,
    projection: String,
    labels: Vec<String>,
}

/// Lists the rows to write from the index CSV, ordered by (patient, study, image).
///
/// A CSV that ends early is an error; with `allow_truncated` it is one reject
/// at the break (the release has no other listing of the rows it lost).
fn plan(root: &Path, allow_truncated: bool) -> Result<Planned<Item>, CsvError> {
    let csv_path = csvio::find(root, PADCHEST_CSV)?;
    let mut table = Table::open(&csv_path)?;
    let [image_id, image_dir, study, patient, projection, labels] = [
        "ImageID",
        "ImageDir",
        "StudyID",
        "PatientID",
        "Projection",
        "Labels",
    ]
    .map(|c| table.column(c));
    let (image_id, image_dir, study, patient, projection, labels) = (
        image_id?,
        image_dir?,
        study?,
        patient?,
        projection?,
        labels?,
    );

    let mut plan = Planned {
        items: Vec::new(),
        rejects: Vec::new(),
        seen: 0,
    };
    let reject = |line: u64, ids: [Option<&str>; 3], reason: String| Reject {
        path: format!("{}:{line}", csv_path.display()),
        subject_id: ids[0].map(str::to_string),
        study_id: ids[1].map(str::to_string),
        image_id: ids[2].map(str::to_string),
        stage: Stage::Csv,
        reason,
    };
    let truncated = csvio::read_all(&mut table, allow_truncated, |row| {
        plan.seen += 1;
        let row = match row {
            Ok(r) => r,
            Err(bad) => {
                let ids = [bad.get(patient), bad.get(study), bad.get(image_id)];
                let opt = ids.map(|s| (!s.is_empty()).then_some(s));
                plan.rejects.push(reject(bad.line, opt, bad.reason.clone()));
                return;
            }
        };
        let ids = [row.get(patient), row.get(study), row.get(image_id)];
        let opt = ids.map(|s| (!s.is_empty()).then_some(s));
        let dir = row.get(image_dir);
        if ids.iter().any(|s| s.is_empty())
            || ids[2].contains(['/', '\\'])
            || dir.contains(['/', '\\'])
        {
            plan.rejects.push(reject(
                row.line,
                opt,
                format!("missing or malformed ids {ids:?} / ImageDir {dir:?}"),
            ));
            return;
        }
        let parsed = match parse_label_list(row.get(labels)) {
            Ok(l) => l,
            Err(e) => {
                plan.rejects.push(reject(row.line, opt, e));
                return;
            }
        };
        // The release's ImageID carries `.png`; accept it without, too.
        let file = if ids[2].ends_with(".png") {
            ids[2].to_string()
        } else {
            format!("{}.png", ids[2])
        };
        plan.items.push(Item {
            image_id: ids[2].trim_end_matches(".png").to_string(),
            image_path: root.join(dir).join(file),
            study: ids[1].to_string(),
            patient: ids[0].to_string(),
            projection: row.get(projection).to_string(),
            labels: parsed,
        });
    })?;
    if let Some(t) = truncated {
        plan.seen += 1;
        let reason = format!("{t}; the rows after it are unknown");
        plan.rejects.push(reject(t.line, [None; 3], reason));
    }
    plan.items.sort_by(|a, b| {
        (&a.patient, &a.study, &a.image_id).cmp(&(&b.patient, &b.study, &b.image_id))
    });
    Ok(plan)
}

/// Runs `ingest padchest --images-only`.
pub fn run(
    opts: &PadchestOptions,
    out: &Path,
    progress: &ProgressBar,
) -> Result<Manifest, PadchestError> {
    let planned = plan(&opts.root, opts.allow_truncated_csv)?;
    let info = RunInfo {
        source: Source::Padchest,
        arguments: serde_json::to_value(opts).expect("serialisable"),
        image_policy: opts.image.clone(),
        tokenizer: None,
        entities: None,
        inputs: std::iter::once(csvio::find(&opts.root, PADCHEST_CSV)?)
            .chain(planned.items.iter().map(|it| it.image_path.clone()))
            .collect(),
    };
    let process = |it: &Item| -> Outcome {
        if !view_kept(&opts.projections, &it.projection) {
            return Outcome::Filtered;
        }
        prepare::image_row(
            &it.image_path,
            prepare::png(&it.image_path, &opts.image),
            Row {
                source: Source::Padchest.name().into(),
                subject_id: it.patient.clone(),
                study_id: it.study.clone(),
                image_id: it.image_id.clone(),
                split: patient_split(&it.patient, opts.split_seed, opts.split_fractions).into(),
                view: it.projection.clone(),
                paired: false,
                finding_labels: it.labels.clone(),
                ..Default::default()
            },
        )
    };
    Ok(shard::run(
        out,
        &opts.shards,
        info,
        planned,
        process,
        progress,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_python_and_numpy_label_lists_without_substring_matching() {
        assert_eq!(parse_label_list("['normal']").unwrap(), ["normal"]);
        assert_eq!(
            parse_label_list("['interstitial pattern', 'unchanged', 'pneumonia']").unwrap(),
            ["interstitial pattern", "unchanged", "pneumonia"]
        );
        assert_eq!(
            parse_label_list("['C0034069' 'C0742362']").unwrap(),
            ["C0034069", "C0742362"]
        );
        assert_eq!(
            parse_label_list("[' pleural effusion', \"it's\"]").unwrap(),
            ["pleural effusion", "it's"]
        );
        assert!(parse_label_list("[]").unwrap().is_empty());
        assert!(parse_label_list("").unwrap().is_empty());
        assert!(parse_label_list("['unterminated]").is_err());
        assert!(parse_label_list("normal").is_err());
        assert!(parse_label_list("[normal]").is_err());
    }

    #[test]
    fn patient_split_is_deterministic_and_roughly_proportional() {
        let f = (0.8, 0.1);
        let mut n = [0usize; 3];
        for p in 0..5000 {
            let id = format!("patient{p}");
            let s = patient_split(&id, 7, f);
            assert_eq!(s, patient_split(&id, 7, f));
            n[["train", "validate", "test"]
                .iter()
                .position(|x| *x == s)
                .unwrap()] += 1;
        }
        assert!((3800..4200).contains(&n[0]), "{n:?}");
        assert!((350..650).contains(&n[1]), "{n:?}");
        assert!((350..650).contains(&n[2]), "{n:?}");
        let moved = (0..1000)
            .filter(|p| {
                patient_split(&format!("patient{p}"), 7, f)
                    != patient_split(&format!("patient{p}"), 8, f)
            })
            .count();
        assert!(moved > 100, "the seed must matter");
    }
}
