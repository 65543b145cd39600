//! The label sets zero-shot evaluation scores: CheXpert's 14 classes (the
//! loader's label columns) and the findings of the releases that keep their
//! own label lists (PadChest, ChestX-ray14, COVIDx, RSNA Pneumonia: the
//! shards' `finding_labels`, read here by shard and row).
//!
//! A row is positive for a finding when its list names it and negative
//! otherwise: these labels cover every finding of the image, so absence
//! means absent (no "not mentioned" state). A PadChest row whose list is
//! empty or holds `exclude` carries no usable labels and is left out; an
//! empty ChestX-ray14, COVIDx or RSNA list is a labelled image with none of
//! the findings ("No Finding", "negative", Target 0).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use arrow_array::Array;
use arrow_array::cast::AsArray;
use pipeline::LABEL_MISSING;
use schemas::col;

/// Which classes zero-shot evaluation scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LabelSet {
    /// The 14 CheXpert classes of the rows' CheXpert label columns.
    Chexpert,
    /// The 5 CheXpert competition classes (`schemas::CHEXPERT_COMPETITION`).
    Chexpert5,
    /// PadChest findings of the PadChest rows: the seen ones
    /// ([`PADCHEST_SEEN`]), the paper's "PadChest seen".
    Padchest,
    /// The 10 most frequent unseen PadChest findings of the test split
    /// ("PadChest unseen top 10").
    #[value(name = "padchest-unseen10")]
    PadchestUnseen10,
    /// The 20 most frequent ("unseen top 20").
    #[value(name = "padchest-unseen20")]
    PadchestUnseen20,
    /// Every unseen PadChest finding of the test split ("all unseen").
    PadchestUnseen,
    /// The 14 ChestX-ray14 findings of the `ingest nih` rows.
    Nih,
    /// COVID-19 on the `ingest covidx` rows.
    Covidx,
    /// Pneumonia on the `ingest rsna` rows.
    Rsna,
}

impl LabelSet {
    /// The shards' `source` whose `finding_labels` this set scores, for the
    /// sets that score label lists.
    pub fn list_source(self) -> Option<&'static str> {
        match self {
            LabelSet::Chexpert | LabelSet::Chexpert5 => None,
            LabelSet::Padchest
            | LabelSet::PadchestUnseen10
            | LabelSet::PadchestUnseen20
            | LabelSet::PadchestUnseen => Some("padchest"),
            LabelSet::Nih => Some("nih"),
            LabelSet::Covidx => Some("covidx"),
            LabelSet::Rsna => Some("rsna"),
        }
    }

    /// Whether an empty label list is a labelled image without findings
    /// (ChestX-ray14's "No Finding", COVIDx's negatives, RSNA's Target 0)
    /// rather than an image without usable labels (PadChest).
    pub fn empty_list_is_negative(self) -> bool {
        matches!(self, LabelSet::Nih | LabelSet::Covidx | LabelSet::Rsna)
    }

    /// For the unseen PadChest sets: how many of the most frequent unseen
    /// findings of the test split they score (`usize::MAX`: all).
    pub fn unseen_top(self) -> Option<usize> {
        match self {
            LabelSet::PadchestUnseen10 => Some(10),
            LabelSet::PadchestUnseen20 => Some(20),
            LabelSet::PadchestUnseen => Some(usize::MAX),
            _ => None,
        }
    }

    /// The classes scored when none are named (the unseen PadChest sets'
    /// depend on the data: see [`LabelSet::unseen_top`]).
    pub fn default_classes(self) -> Vec<String> {
        match self {
            LabelSet::PadchestUnseen10 | LabelSet::PadchestUnseen20 | LabelSet::PadchestUnseen => {
                Vec::new()
            }
            LabelSet::Chexpert => schemas::CHEXPERT_CLASSES
                .iter()
                .map(|(name, _)| name.to_string())
                .collect(),
            LabelSet::Chexpert5 => schemas::CHEXPERT_COMPETITION
                .iter()
                .map(|name| name.to_string())
                .collect(),
            LabelSet::Padchest => PADCHEST_SEEN.iter().map(|(f, _)| f.to_string()).collect(),
            LabelSet::Nih => schemas::NIH_CLASSES.iter().map(|c| c.to_string()).collect(),
            LabelSet::Covidx => vec![schemas::COVID19.to_string()],
            // `ingest rsna`'s label, which is also the prompt's phrase.
            LabelSet::Rsna => vec![schemas::PNEUMONIA.to_string()],
        }
    }
}

/// Where one scored class's labels are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassLabels {
    /// Column of the loader's CheXpert labels (an index of
    /// [`schemas::CHEXPERT_CLASSES`]).
    Chexpert(usize),
    /// A finding, lower-cased, looked up in the rows' `finding_labels`.
    Finding(String),
}

impl LabelSet {
    /// The classes `names` of this set (its default classes when empty),
    /// each with where its labels are. An unknown CheXpert class is an
    /// error listing the known ones.
    pub fn resolve(self, names: &[String]) -> Result<Vec<(String, ClassLabels)>> {
        let names = if names.is_empty() {
            self.default_classes()
        } else {
            names.to_vec()
        };
        names
            .into_iter()
            .map(|name| {
                let labels = match self.list_source() {
                    None => ClassLabels::Chexpert(
                        schemas::CHEXPERT_CLASSES
                            .iter()
                            .position(|(c, _)| *c == name)
                            .with_context(|| {
                                format!(
                                    "unknown class {name:?}; the CheXpert classes are {:?}",
                                    schemas::CHEXPERT_CLASSES.map(|c| c.0)
                                )
                            })?,
                    ),
                    Some(_) => ClassLabels::Finding(name.to_lowercase()),
                };
                Ok((name, labels))
            })
            .collect()
    }

    /// Whether an image has at most one of the classes (COVIDx: COVID-19
    /// or pneumonia or neither), so fine-tuning trains a softmax over the
    /// classes and "none" rather than one sigmoid per class.
    pub fn exclusive(self) -> bool {
        matches!(self, LabelSet::Covidx)
    }
}

/// PadChest findings that name a CheXpert class, so that training on
/// MIMIC-CXR reports has seen them ("PadChest seen"): the default PadChest
/// classes. Each is scored with its own PadChest wording.
pub const PADCHEST_SEEN: [(&str, &str); 8] = [
    ("atelectasis", "Atelectasis"),
    ("cardiomegaly", "Cardiomegaly"),
    ("consolidation", "Consolidation"),
    ("nodule", "Lung Lesion"),
    ("pleural effusion", "Pleural Effusion"),
    ("pneumonia", "Pneumonia"),
    ("pneumothorax", "Pneumothorax"),
    ("pulmonary edema", "Edema"),
];

/// PadChest labels that are not findings: never ranked among the unseen
/// classes.
const NOT_FINDINGS: [&str; 4] = ["normal", "exclude", "suboptimal study", "unchanged"];

/// Where an embedded row is stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoredRow {
    /// Its shard file.
    pub shard: PathBuf,
    /// Its row in that file.
    pub row: u32,
}

/// The `finding_labels` list of each row (lower-cased), `None` for rows
/// whose `source` is not `source`.
pub fn finding_lists(rows: &[StoredRow], source: &str) -> Result<Vec<Option<Vec<String>>>> {
    Ok(row_meta(rows)?
        .into_iter()
        .map(|m| m.findings.filter(|_| m.source == source))
        .collect())
}

/// The `subject_id` (patient) of each row.
pub fn subject_ids(rows: &[StoredRow]) -> Result<Vec<String>> {
    Ok(row_meta(rows)?.into_iter().map(|m| m.subject_id).collect())
}

/// The columns of a row that evaluation reads besides its image and
/// CheXpert labels (which come through the loader).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowMeta {
    /// `source`: `mimic`, `padchest`, `nih`, ...
    pub source: String,
    /// `subject_id`: the patient.
    pub subject_id: String,
    /// `image_id`.
    pub image_id: String,
    /// `finding_labels`, lower-cased and trimmed (`None` when null).
    pub findings: Option<Vec<String>>,
}

/// [`RowMeta`] of each row, each shard read once.
pub fn row_meta(rows: &[StoredRow]) -> Result<Vec<RowMeta>> {
    let mut by_shard: BTreeMap<&Path, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        by_shard.entry(&r.shard).or_default().push(i);
    }
    let mut out: Vec<Option<RowMeta>> = vec![None; rows.len()];
    for (shard, indices) in by_shard {
        let read = read_shard_meta(shard)?;
        for i in indices {
            let row = rows[i].row as usize;
            let meta = read
                .get(row)
                .with_context(|| format!("{}: no row {row}", shard.display()))?;
            out[i] = Some(meta.clone());
        }
    }
    Ok(out
        .into_iter()
        .map(|m| m.expect("every row filled"))
        .collect())
}

/// Every row's [`RowMeta`] of one shard.
fn read_shard_meta(path: &Path) -> Result<Vec<RowMeta>> {
    let names = [
        col::SOURCE,
        col::SUBJECT_ID,
        col::IMAGE_ID,
        col::FINDING_LABELS,
    ];
    let mut out = Vec::new();
    for batch in shards::reader(path, &names, None)? {
        let batch = batch.with_context(|| format!("reading {}", path.display()))?;
        let c = shards::Columns::new(&batch, path);
        let (source, subject, image) = (
            c.strings(col::SOURCE)?,
            c.strings(col::SUBJECT_ID)?,
            c.strings(col::IMAGE_ID)?,
        );
        let lists = c.finding_labels()?;
        for i in 0..batch.num_rows() {
            let findings = lists.is_valid(i).then(|| {
                lists
                    .value(i)
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(|s| s.trim().to_lowercase())
                    .collect()
            });
            out.push(RowMeta {
                source: source.value(i).to_string(),
                subject_id: subject.value(i).to_string(),
                image_id: image.value(i).to_string(),
                findings,
            });
        }
    }
    Ok(out)
}

/// Labels of `class` per row: 1 when the list names it, 0 when it does
/// not, [`LABEL_MISSING`] for rows without usable labels (see the module
/// doc; an empty list is a negative where `empty_is_negative`).
pub fn targets(lists: &[Option<Vec<String>>], class: &str, empty_is_negative: bool) -> Vec<i8> {
    let class = class.to_lowercase();
    lists
        .iter()
        .map(|list| target(list.as_deref(), &class, empty_is_negative))
        .collect()
}

/// The label of one row's list for `class` (lower-cased), as [`targets`].
pub fn target(list: Option<&[String]>, class: &str, empty_is_negative: bool) -> i8 {
    match list {
        Some(l) if l.is_empty() && empty_is_negative => 0,
        Some(l) if !l.is_empty() && !l.iter().any(|x| x == "exclude") => {
            i8::from(l.iter().any(|x| x == class))
        }
        _ => LABEL_MISSING,
    }
}

/// The `n` most frequent findings of `lists` that are not among
/// [`PADCHEST_SEEN`] ("unseen" classes), most frequent first, ties by name.
pub fn unseen_top(lists: &[Option<Vec<String>>], n: usize) -> Vec<String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for label in lists.iter().flatten().flatten() {
        if !PADCHEST_SEEN.iter().any(|(seen, _)| seen == label)
            && !NOT_FINDINGS.contains(&label.as_str())
        {
            *counts.entry(label).or_default() += 1;
        }
    }
    let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    ranked
        .into_iter()
        .take(n)
        .map(|(l, _)| l.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(labels: &[&str]) -> Option<Vec<String>> {
        Some(labels.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn a_finding_is_positive_where_listed_and_unusable_rows_are_left_out() {
        let lists = vec![
            list(&["pleural effusion", "cardiomegaly"]),
            list(&["normal"]),
            list(&[]),
            list(&["exclude", "pleural effusion"]),
            None,
        ];
        assert_eq!(
            targets(&lists, "Pleural Effusion", false),
            [1, 0, LABEL_MISSING, LABEL_MISSING, LABEL_MISSING]
        );
        assert_eq!(
            targets(&lists, "cardiomegaly", false),
            [1, 0, LABEL_MISSING, LABEL_MISSING, LABEL_MISSING]
        );
        // ChestX-ray14's "No Finding" and COVIDx's negatives: empty lists.
        assert_eq!(
            targets(&lists, "cardiomegaly", true),
            [1, 0, 0, LABEL_MISSING, LABEL_MISSING]
        );
    }

    #[test]
    fn rsna_scores_pneumonia_on_the_rsna_rows_with_target_0_negative() {
        let set = LabelSet::Rsna;
        assert_eq!(set.list_source(), Some(schemas::Source::Rsna.name()));
        let classes = set.resolve(&[]).unwrap();
        assert_eq!(
            classes,
            [(
                "pneumonia".to_string(),
                ClassLabels::Finding("pneumonia".into())
            )]
        );
        let lists = vec![list(&["pneumonia"]), list(&[]), None];
        assert_eq!(
            targets(&lists, &classes[0].0, set.empty_list_is_negative()),
            [1, 0, LABEL_MISSING]
        );
    }

    #[test]
    fn unseen_classes_rank_by_frequency_without_seen_ones_or_non_findings() {
        let lists = vec![
            list(&["scoliosis", "cardiomegaly", "normal"]),
            list(&["aortic elongation", "scoliosis"]),
            list(&["copd signs", "unchanged"]),
            list(&["aortic elongation", "scoliosis"]),
            None,
        ];
        assert_eq!(unseen_top(&lists, 2), ["scoliosis", "aortic elongation"]);
        assert_eq!(
            unseen_top(&lists, 10),
            ["scoliosis", "aortic elongation", "copd signs"]
        );
    }
}
