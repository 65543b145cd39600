//! The RSNA Pneumonia Detection Challenge as released: image-only rows, its
//! label in `finding_labels`, its boxes in `boxes.jsonl` beside the shards.
//!
//! ```text
//! root/
//!   stage_2_train_labels.csv          patientId,x,y,width,height,Target  (or .csv.gz)
//!   stage_2_detailed_class_info.csv   patientId,class                    (optional)
//!   stage_2_train_images/<patientId>.dcm
//! ```
//!
//! The labels file has one line per box: a patient with three boxes is three
//! lines with `Target` 1, a negative patient one line with empty coordinates
//! and `Target` 0. Each patient has one image, so a row of the shards is a
//! patient (`image_id` = `subject_id` = `study_id` = `patientId`), with
//! `finding_labels` `["pneumonia"]` for `Target` 1 and `[]` for 0 (an empty
//! list is a negative row, as for COVIDx). The class file, when present, must
//! agree: `Lung Opacity` for `Target` 1, `Normal` or
//! `No Lung Opacity / Not Normal` for 0.
//!
//! The unit of the counts is the patient: a patient whose lines disagree (a
//! `Target` 1 line without a box, a box with `Target` 0, coordinates that are
//! not numbers, `Target` 1 on one line and 0 on another, a class that
//! contradicts the `Target`, a box beyond its image) is one reject naming the
//! file and line of each problem. Keeping part of its boxes would make the
//! boxes file claim the rest of the image is clear.
//!
//! The view (`view`, and `--views`) is each DICOM's ViewPosition: the
//! release's images are frontal, `PA` or `AP`, and its CSVs do not say which.
//!
//! The split is per patient, by a seeded hash of the patient id
//! ([`patient_split`], shared with PadChest and ChestX-ray14), 70/15/15 by
//! default.
//!
//! `boxes.jsonl` has one line per written image with boxes, in the format of
//! the synthetic world's `lesions.jsonl` (what `train viz-masks --lesions`
//! reads), in the pixel frame of the stored image: see [`write_boxes`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arrow_array::Array;
use indicatif::ProgressBar;
use schemas::{Manifest, PNEUMONIA, Reject, Source, Stage, col};
use serde::Serialize;

use crate::csvio::{self, CsvError, Table};
use crate::mimic::view_kept;
use crate::padchest::patient_split;
use crate::prepare;
use crate::shard::{self, Outcome, Planned, Row, RunInfo, ShardError, ShardOptions, io_err};

/// The labels file's stem (`.csv` or `.csv.gz`).
pub const LABELS_STEM: &str = "stage_2_train_labels";
/// The detailed class file's stem (`.csv` or `.csv.gz`).
pub const CLASS_INFO_STEM: &str = "stage_2_detailed_class_info";
/// The folder of the labelled DICOMs.
pub const IMAGES_DIR: &str = "stage_2_train_images";
/// The boxes of the written images, next to `manifest.json`.
pub const BOXES_FILE: &str = "boxes.jsonl";
/// The class of a box in `boxes.jsonl`: CheXpert's name, as the synthetic
/// world's lesion classes are.
pub const BOX_CLASS: &str = "Pneumonia";
/// The detailed class of a `Target` 1 image.
pub const LUNG_OPACITY: &str = "Lung Opacity";
/// The detailed classes of a `Target` 0 image.
pub const NEGATIVE_CLASSES: [&str; 2] = ["Normal", "No Lung Opacity / Not Normal"];
/// Default shares of patients in train and validate (the rest is test).
pub const DEFAULT_SPLIT_FRACTIONS: (f64, f64) = (0.7, 0.15);

/// Everything an RSNA run needs.
#[derive(Debug, Clone, Serialize)]
pub struct RsnaOptions {
    /// Folder holding the label CSVs and `stage_2_train_images/`.
    pub root: PathBuf,
    /// Shares of patients in train and validate; the rest is test.
    pub split_fractions: (f64, f64),
    /// Seed of the patient-level split.
    pub seed: u64,
    /// Views kept (each DICOM's ViewPosition: `PA`, `AP`); empty keeps all.
    pub views: Vec<String>,
    /// Image policy (`dicom_window` applies).
    pub image: schemas::ImagePolicy,
    /// Shard sizes and strictness.
    pub shards: ShardOptions,
}

/// Why an RSNA run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RsnaError {
    /// The folder is not laid out as an RSNA release.
    #[error("{}: not an RSNA Pneumonia Detection Challenge release: {reason}", root.display())]
    Layout {
        /// The folder given.
        root: PathBuf,
        /// What was looked for and not found.
        reason: String,
    },
    /// The split fractions cannot be shares of the patients.
    #[error(
        "split fractions train {train} and validate {validate}: each must be in [0, 1] and together at most 1"
    )]
    Fractions {
        /// Share of train.
        train: f64,
        /// Share of validate.
        validate: f64,
    },
    /// A label CSV is unusable as a whole (unreadable, a column missing).
    #[error(transparent)]
    Csv(#[from] CsvError),
    /// Writing shards or `boxes.jsonl` failed.
    #[error(transparent)]
    Shard(#[from] ShardError),
}

/// One box as the labels file gives it: top-left corner, width and height in
/// pixels of the original DICOM, and where it was read.
#[derive(Debug, Clone, PartialEq)]
struct LabelBox {
    /// `file:line` of the box.
    at: String,
    x: f64,
    y: f64,
    width: f64,
    height: f64,
}

#[derive(Debug, Clone)]
struct Item {
    /// The patientId: the image, the study and the subject.
    patient: String,
    image_path: PathBuf,
    split: &'static str,
    positive: bool,
    /// In file order; empty for a negative image.
    boxes: Vec<LabelBox>,
}

/// Finds the labels file, the class file (optional) and the image folder, or
/// says what was looked for.
fn layout(root: &Path) -> Result<(PathBuf, Option<PathBuf>, PathBuf), RsnaError> {
    let err = |reason: String| RsnaError::Layout {
        root: root.to_path_buf(),
        reason,
    };
    let labels = csvio::find(root, LABELS_STEM).map_err(|_| {
        err(format!(
            "no labels file: looked for {LABELS_STEM}.csv (or .csv.gz), with the DICOMs in {IMAGES_DIR}/"
        ))
    })?;
    let images = root.join(IMAGES_DIR);
    if !images.is_dir() {
        return Err(err(format!(
            "{} is there but its image folder {IMAGES_DIR}/ is not",
            labels.file_name().unwrap_or_default().to_string_lossy()
        )));
    }
    let classes = csvio::find(root, CLASS_INFO_STEM).ok();
    if classes.is_none() {
        tracing::warn!(
            "{}: no {CLASS_INFO_STEM}.csv: the Targets are not checked against the detailed classes",
            root.display()
        );
    }
    Ok((labels, classes, images))
}

/// What the label lines say about one patient, before it is judged.
#[derive(Debug, Default)]
struct Patient {
    /// `(file:line, Target)` of every line.
    targets: Vec<(String, bool)>,
    boxes: Vec<LabelBox>,
    /// `(file:line, reason)` of every line that is wrong on its own or
    /// disagrees with the others.
    problems: Vec<(String, String)>,
}

/// A coordinate cell: a finite number.
fn coordinate(cell: &str) -> Option<f64> {
    cell.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// One line of the labels file: its `Target` and its box, or why it is wrong.
fn parse_line(
    cells: [&str; 4],
    target: &str,
    at: &str,
) -> Result<(bool, Option<LabelBox>), String> {
    let positive = match target {
        "1" => true,
        "0" => false,
        other => return Err(format!("Target {other:?} is neither 0 nor 1")),
    };
    let bx = if cells.iter().all(|c| c.is_empty()) {
        None
    } else {
        let values: Vec<Option<f64>> = cells.iter().map(|c| coordinate(c)).collect();
        let [Some(x), Some(y), Some(width), Some(height)] = values[..] else {
            return Err(format!(
                "coordinates x={:?} y={:?} width={:?} height={:?} are not all numbers",
                cells[0], cells[1], cells[2], cells[3]
            ));
        };
        if x < 0.0 || y < 0.0 || width <= 0.0 || height <= 0.0 {
            return Err(format!(
                "box x={x} y={y} width={width} height={height} is empty or starts at a negative coordinate"
            ));
        }
        Some(LabelBox {
            at: at.to_string(),
            x,
            y,
            width,
            height,
        })
    };
    match (positive, &bx) {
        (true, None) => Err("Target 1 without a box".into()),
        (false, Some(_)) => Err("a box with Target 0".into()),
        _ => Ok((positive, bx)),
    }
}

/// A patientId that can name a file in the image folder.
fn plain_id(id: &str) -> bool {
    !id.is_empty() && !id.contains(['/', '\\']) && id != "." && id != ".."
}

/// Reads the labels (and the class file) into one item per patient, ordered
/// by patientId; a patient with any problem is one reject.
fn plan(
    opts: &RsnaOptions,
    labels_path: &Path,
    classes_path: Option<&Path>,
    images: &Path,
) -> Result<Planned<Item>, RsnaError> {
    let mut table = Table::open(labels_path)?;
    let (pid, x, y, w, h, target) = (
        table.column("patientId")?,
        table.column("x")?,
        table.column("y")?,
        table.column("width")?,
        table.column("height")?,
        table.column("Target")?,
    );
    let mut plan = Planned {
        items: Vec::new(),
        rejects: Vec::new(),
        seen: 0,
    };
    let mut patients: HashMap<String, Patient> = HashMap::new();
    // Lines that name no usable patient are input rows of their own.
    let mut orphan = |at: String, id: &str, reason: String| {
        plan.seen += 1;
        plan.rejects.push(Reject {
            path: at,
            subject_id: None,
            study_id: None,
            image_id: (!id.is_empty()).then(|| id.to_string()),
            stage: Stage::Csv,
            reason,
        });
    };
    let at = |line: u64| format!("{}:{line}", labels_path.display());
    // A cut-off labels file could cut a patient's boxes: it stops the run.
    csvio::read_all(&mut table, false, |row| match row {
        Err(bad) => {
            let id = bad.get(pid);
            if plain_id(id) {
                patients
                    .entry(id.to_string())
                    .or_default()
                    .problems
                    .push((at(bad.line), bad.reason.clone()));
            } else {
                orphan(at(bad.line), id, bad.reason.clone());
            }
        }
        Ok(row) => {
            let id = row.get(pid);
            if !plain_id(id) {
                orphan(
                    at(row.line),
                    id,
                    format!("patientId {id:?} is empty or not a plain file name"),
                );
                return;
            }
            let here = at(row.line);
            let p = patients.entry(id.to_string()).or_default();
            let cells = [row.get(x), row.get(y), row.get(w), row.get(h)];
            match parse_line(cells, row.get(target), &here) {
                Ok((positive, bx)) => {
                    p.targets.push((here, positive));
                    p.boxes.extend(bx);
                }
                Err(reason) => p.problems.push((here, reason)),
            }
        }
    })?;
    // A patient is positive or negative as a whole: a line that disagrees
    // with the patient's first is a problem of its own.
    for p in patients.values_mut() {
        if let Some(first) = p.targets.first().cloned()
            && let Some(other) = p.targets.iter().find(|t| t.1 != first.1)
        {
            let (_, first_line) = first.0.rsplit_once(':').unwrap_or(("", &first.0));
            let reason = format!(
                "conflicting Target: {} here, {} on line {first_line}",
                u8::from(other.1),
                u8::from(first.1),
            );
            p.problems.push((other.0.clone(), reason));
        }
    }
    if let Some(path) = classes_path {
        check_classes(path, &mut patients)?;
    }

    let mut ids: Vec<&String> = patients.keys().collect();
    ids.sort();
    for id in ids {
        let p = &patients[id];
        plan.seen += 1;
        let problems = &p.problems;
        let positive = p.targets.first().map(|t| t.1);
        let (Some(positive), []) = (positive, problems.as_slice()) else {
            let (first_at, _) = problems
                .first()
                .cloned()
                .unwrap_or_else(|| (labels_path.display().to_string(), String::new()));
            // The first problem is where `path` points; any others say where.
            let reason = match problems.as_slice() {
                [] => "no usable line".to_string(),
                [(_, first), rest @ ..] => std::iter::once(first.clone())
                    .chain(rest.iter().map(|(at, r)| format!("{at}: {r}")))
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            plan.rejects.push(Reject {
                path: first_at,
                subject_id: Some(id.clone()),
                study_id: None,
                image_id: Some(id.clone()),
                stage: Stage::Csv,
                reason,
            });
            continue;
        };
        plan.items.push(Item {
            patient: id.clone(),
            image_path: images.join(format!("{id}.dcm")),
            split: patient_split(id, opts.seed, opts.split_fractions),
            positive,
            boxes: p.boxes.clone(),
        });
    }
    Ok(plan)
}

/// Adds a problem to every patient whose detailed class contradicts its
/// Targets. Lines about patients the labels file does not list change no
/// row; they are counted in one warning.
fn check_classes(path: &Path, patients: &mut HashMap<String, Patient>) -> Result<(), RsnaError> {
    let mut table = Table::open(path)?;
    let (pid, class) = (table.column("patientId")?, table.column("class")?);
    let mut unlisted = (0usize, String::new());
    let at = |line: u64| format!("{}:{line}", path.display());
    csvio::read_all(&mut table, false, |row| {
        let (line, id, class, bad) = match &row {
            Ok(r) => (r.line, r.get(pid), r.get(class), None),
            Err(b) => (b.line, b.get(pid), b.get(class), Some(b.reason.clone())),
        };
        let Some(p) = patients.get_mut(id) else {
            if unlisted.0 == 0 {
                unlisted.1 = format!("{} ({id:?})", at(line));
            }
            unlisted.0 += 1;
            return;
        };
        let problem = if let Some(reason) = bad {
            Some(reason)
        } else if class == LUNG_OPACITY {
            p.targets
                .iter()
                .any(|t| !t.1)
                .then(|| format!("class {class:?} contradicts Target 0"))
        } else if NEGATIVE_CLASSES.contains(&class) {
            p.targets
                .iter()
                .any(|t| t.1)
                .then(|| format!("class {class:?} contradicts Target 1"))
        } else {
            Some(format!(
                "unknown class {class:?}; expected {LUNG_OPACITY:?}, {:?} or {:?}",
                NEGATIVE_CLASSES[0], NEGATIVE_CLASSES[1]
            ))
        };
        if let Some(reason) = problem {
            p.problems.push((at(line), reason));
        }
    })?;
    if unlisted.0 > 0 {
        tracing::warn!(
            "{} lines of {} name patients that the labels file does not list (first at {}); they are ignored",
            unlisted.0,
            path.display(),
            unlisted.1
        );
    }
    Ok(())
}

/// The first box of `boxes` that does not lie inside a `cols` × `rows` image.
fn box_outside(boxes: &[LabelBox], cols: u32, rows: u32) -> Option<&LabelBox> {
    boxes
        .iter()
        .find(|b| b.x + b.width > f64::from(cols) || b.y + b.height > f64::from(rows))
}

/// Runs `ingest rsna`: the shards, then `boxes.jsonl`.
pub fn run(opts: &RsnaOptions, out: &Path, progress: &ProgressBar) -> Result<Manifest, RsnaError> {
    let (train, validate) = opts.split_fractions;
    if !(0.0..=1.0).contains(&train) || !(0.0..=1.0).contains(&validate) || train + validate > 1.0 {
        return Err(RsnaError::Fractions { train, validate });
    }
    let (labels, classes, images) = layout(&opts.root)?;
    let planned = plan(opts, &labels, classes.as_deref(), &images)?;
    let mut inputs = vec![labels.clone()];
    inputs.extend(classes.clone());
    inputs.extend(planned.items.iter().map(|it| it.image_path.clone()));
    let info = RunInfo {
        source: Source::Rsna,
        arguments: serde_json::to_value(opts).expect("serialisable"),
        image_policy: opts.image.clone(),
        tokenizer: None,
        entities: None,
        inputs,
    };
    let boxed: Vec<(String, Vec<LabelBox>)> = planned
        .items
        .iter()
        .filter(|it| !it.boxes.is_empty())
        .map(|it| (it.patient.clone(), it.boxes.clone()))
        .collect();
    let process = |it: &Item| -> Outcome {
        let rejected = |path: String, stage, reason| {
            Outcome::Rejected(Box::new(Reject {
                path,
                subject_id: Some(it.patient.clone()),
                study_id: None,
                image_id: Some(it.patient.clone()),
                stage,
                reason,
            }))
        };
        let shown = it.image_path.display().to_string();
        if !it.image_path.is_file() {
            return rejected(
                shown,
                Stage::ImageRead,
                format!(
                    "DICOM not found: {} lists patientId {} but {IMAGES_DIR}/ has no {}.dcm",
                    labels.display(),
                    it.patient,
                    it.patient
                ),
            );
        }
        match prepare::dicom(&it.image_path, &opts.image) {
            Ok(mut img) => {
                // The release records the view only inside each DICOM, so
                // the filter applies after the decode: a corrupt file of an
                // unwanted view is a reject, not filtered.
                let view = img.view.take().unwrap_or_default();
                if !view_kept(&opts.views, &view) {
                    return Outcome::Filtered;
                }
                if let Some(b) = box_outside(&it.boxes, img.orig_cols, img.orig_rows) {
                    return rejected(
                        b.at.clone(),
                        Stage::Csv,
                        format!(
                            "box x={} y={} width={} height={} reaches beyond the {}×{} image {}",
                            b.x, b.y, b.width, b.height, img.orig_cols, img.orig_rows, shown
                        ),
                    );
                }
                Outcome::Row(Box::new(img.into_row(Row {
                    source: Source::Rsna.name().into(),
                    subject_id: it.patient.clone(),
                    // One image per patient: the patient is the study.
                    study_id: it.patient.clone(),
                    image_id: it.patient.clone(),
                    split: it.split.into(),
                    view,
                    paired: false,
                    finding_labels: if it.positive {
                        vec![PNEUMONIA.to_string()]
                    } else {
                        Vec::new()
                    },
                    ..Default::default()
                })))
            }
            Err((stage, reason)) => rejected(shown, stage, reason),
        }
    };
    let manifest = shard::run(out, &opts.shards, info, planned, process, progress)?;
    write_boxes(out, &manifest, &boxed)?;
    Ok(manifest)
}

/// One box of `boxes.jsonl`: the synthetic world's `LesionRecord`.
#[derive(Debug, Serialize)]
struct BoxRecord<'a> {
    source: &'static str,
    image_id: &'a str,
    study_id: &'a str,
    class: &'static str,
    /// `[x0, y0, x1, y1]` in pixels of the stored image, `x1`/`y1` exclusive.
    bbox: [u32; 4],
    certainty: &'static str,
}

/// One line of `boxes.jsonl`: the synthetic world's `LesionLine`.
#[derive(Debug, Serialize)]
struct BoxLine<'a> {
    source: &'static str,
    image_id: &'a str,
    study_id: &'a str,
    /// The shard holding the image, relative to the output folder (the
    /// world's lines name the image file; here the image is a shard row).
    path: &'a str,
    width: u32,
    height: u32,
    lesions: Vec<BoxRecord<'a>>,
}

/// The size of a written image: stored and original, and its shard.
struct Stored {
    shard: String,
    width: u32,
    height: u32,
    cols: u32,
    rows: u32,
}

/// A box of the original DICOM in the stored image's pixel frame.
///
/// The image is resized once, edge to edge, from `cols` × `rows` to
/// `width` × `height` (the short side to the policy's, the long side
/// rounded), so a point at `x` lands at `x · width / cols` and at
/// `y · height / rows`: the box is scaled by exactly those factors. The
/// lesion format holds whole pixels, so the scaled box is widened to the
/// smallest whole-pixel box that covers it (start rounded down, exclusive
/// end rounded up) and clipped to the image. Multiplying before dividing
/// keeps an end that lands on a pixel edge exact, so it is not widened.
fn scaled_box(b: &LabelBox, s: &Stored) -> [u32; 4] {
    let sx = |v: f64| v * f64::from(s.width) / f64::from(s.cols);
    let sy = |v: f64| v * f64::from(s.height) / f64::from(s.rows);
    let clip = |v: f64, max: u32| v.clamp(0.0, f64::from(max)) as u32;
    [
        clip(sx(b.x).floor(), s.width),
        clip(sy(b.y).floor(), s.height),
        clip(sx(b.x + b.width).ceil(), s.width),
        clip(sy(b.y + b.height).ceil(), s.height),
    ]
}

/// The stored and original size of every row of the folder's shards.
fn stored_sizes(out: &Path, manifest: &Manifest) -> Result<HashMap<String, Stored>, ShardError> {
    let mut sizes = HashMap::new();
    let names = [
        col::IMAGE_ID,
        col::IMAGE_WIDTH,
        col::IMAGE_HEIGHT,
        col::ORIG_COLS,
        col::ORIG_ROWS,
    ];
    for entry in &manifest.shards {
        let path = out.join(&entry.file);
        for batch in shards::reader(&path, &names, None)? {
            let batch = batch.map_err(|e| shards::ShardsError::parquet(&path, e))?;
            let c = shards::Columns::new(&batch, &path);
            let ids = c.strings(col::IMAGE_ID)?;
            let [w, h, cols, rows] = [
                col::IMAGE_WIDTH,
                col::IMAGE_HEIGHT,
                col::ORIG_COLS,
                col::ORIG_ROWS,
            ]
            .map(|name| c.ints(name));
            let (w, h, cols, rows) = (w?, h?, cols?, rows?);
            for i in 0..c.len() {
                let dims = [w.value(i), h.value(i), cols.value(i), rows.value(i)];
                if ids.is_null(i) || dims.iter().any(|d| *d <= 0) {
                    return Err(ShardError::Format {
                        path: path.clone(),
                        message: format!("row {i} has no image id or size"),
                    });
                }
                let [width, height, cols, rows] = dims.map(|d| d as u32);
                sizes.insert(
                    ids.value(i).to_string(),
                    Stored {
                        shard: entry.file.clone(),
                        width,
                        height,
                        cols,
                        rows,
                    },
                );
            }
        }
    }
    Ok(sizes)
}

/// Writes `boxes.jsonl`: one line per written image with boxes, in
/// patientId order, its boxes in the labels file's order, scaled into the
/// stored image's pixel frame by [`scaled_box`].
///
/// It is made from the plan and the finished shards alone (their stored and
/// original sizes), not from the images' processing, so a resumed run, whose
/// earlier shards were written by another process, gives the same bytes as
/// an uninterrupted one. It is written after `manifest.json`: a run killed
/// between the two is completed by running it again, which finds the shards
/// finished and writes only this file. A file that already holds these
/// bytes is left as it is, so that a rerun over a finished folder changes
/// nothing.
fn write_boxes(
    out: &Path,
    manifest: &Manifest,
    boxed: &[(String, Vec<LabelBox>)],
) -> Result<(), ShardError> {
    let sizes = stored_sizes(out, manifest)?;
    let mut bytes = Vec::new();
    for (id, boxes) in boxed {
        // Rejected images have no row, and so no line.
        let Some(s) = sizes.get(id) else { continue };
        let line = BoxLine {
            source: Source::Rsna.name(),
            image_id: id,
            study_id: id,
            path: &s.shard,
            width: s.width,
            height: s.height,
            lesions: boxes
                .iter()
                .map(|b| BoxRecord {
                    source: Source::Rsna.name(),
                    image_id: id,
                    study_id: id,
                    class: BOX_CLASS,
                    bbox: scaled_box(b, s),
                    certainty: "positive",
                })
                .collect(),
        };
        serde_json::to_writer(&mut bytes, &line).expect("serialisable");
        bytes.push(b'\n');
    }
    let path = out.join(BOXES_FILE);
    // A write killed before its rename leaves its temporary file.
    let tmp = shard::temporary_path(&path);
    if tmp.exists() {
        std::fs::remove_file(&tmp).map_err(io_err(&tmp))?;
    }
    if std::fs::read(&path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    shard::write_atomic(&path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(root: &Path) -> RsnaOptions {
        RsnaOptions {
            root: root.to_path_buf(),
            split_fractions: DEFAULT_SPLIT_FRACTIONS,
            seed: 0,
            views: Vec::new(),
            image: schemas::ImagePolicy::default(),
            shards: ShardOptions::default(),
        }
    }

    fn planned(labels: &str, classes: Option<&str>) -> Planned<Item> {
        let dir = tempfile::tempdir().unwrap();
        let l = dir.path().join("stage_2_train_labels.csv");
        std::fs::write(&l, labels).unwrap();
        let c = classes.map(|text| {
            let c = dir.path().join("stage_2_detailed_class_info.csv");
            std::fs::write(&c, text).unwrap();
            c
        });
        plan(&opts(dir.path()), &l, c.as_deref(), dir.path()).unwrap()
    }

    #[test]
    fn one_item_per_patient_and_every_inconsistency_rejects_the_patient() {
        let labels = "patientId,x,y,width,height,Target\n\
            b,,,,,0\n\
            a,10,20,30,40,1\n\
            a,50.5,60,70,80,1\n\
            c,,,,,1\n\
            d,1,2,3,4,0\n\
            e,1,two,3,4,1\n\
            f,1,2,3,4,1\n\
            f,,,,,0\n\
            ,1,2,3,4,1\n\
            g,1,2,3,4,1\n\
            h,,,,,2\n\
            i,1,2,0,4,1\n\
            j,1,2,3,4,1\n\
            j,x,2,3,4,1\n";
        let classes = "patientId,class\n\
            a,Lung Opacity\n\
            a,Lung Opacity\n\
            b,No Lung Opacity / Not Normal\n\
            g,Normal\n\
            zz,Normal\n\
            j,Normal\n";
        let p = planned(labels, Some(classes));
        // a, b and eight other patients, and one line without a patientId.
        assert_eq!(p.seen, 11);
        let ids: Vec<_> = p.items.iter().map(|i| i.patient.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(p.items[0].positive && !p.items[1].positive);
        let boxes: Vec<_> = p.items[0]
            .boxes
            .iter()
            .map(|b| [b.x, b.y, b.width, b.height])
            .collect();
        assert_eq!(boxes, [[10.0, 20.0, 30.0, 40.0], [50.5, 60.0, 70.0, 80.0]]);
        assert!(
            p.items[0].boxes[1]
                .at
                .ends_with("stage_2_train_labels.csv:4")
        );
        assert!(p.items[1].boxes.is_empty());

        let reason = |id: &str| {
            let r = p
                .rejects
                .iter()
                .find(|r| r.image_id.as_deref() == Some(id))
                .unwrap_or_else(|| panic!("no reject for {id}: {:#?}", p.rejects));
            assert_eq!(r.stage, Stage::Csv);
            (
                r.path.rsplit('/').next().unwrap().to_string(),
                r.reason.clone(),
            )
        };
        let (at, r) = reason("c");
        assert!(at == "stage_2_train_labels.csv:5" && r.contains("Target 1 without a box"));
        assert!(reason("d").1.contains("a box with Target 0"));
        assert!(
            reason("e").1.contains("not all numbers"),
            "{:?}",
            reason("e")
        );
        let (at, r) = reason("f");
        assert_eq!(at, "stage_2_train_labels.csv:9");
        assert_eq!(r, "conflicting Target: 0 here, 1 on line 8");
        let (at, r) = reason("g");
        assert_eq!(at, "stage_2_detailed_class_info.csv:5");
        assert!(r.contains("\"Normal\" contradicts Target 1"), "{r}");
        assert!(reason("h").1.contains("neither 0 nor 1"));
        assert!(reason("i").1.contains("empty"));
        let orphan = p.rejects.iter().find(|r| r.image_id.is_none()).unwrap();
        assert!(orphan.path.ends_with(":10") && orphan.reason.contains("patientId"));
        // Every problem of a patient is named, each after the first with its place.
        let (at, r) = reason("j");
        assert_eq!(at, "stage_2_train_labels.csv:15");
        assert!(r.starts_with("coordinates x=\"x\""), "{r}");
        assert!(
            r.ends_with("stage_2_detailed_class_info.csv:7: class \"Normal\" contradicts Target 1"),
            "{r}"
        );
        assert_eq!(p.rejects.len(), 9);
    }

    #[test]
    fn boxes_scale_by_the_resize_and_cover_whole_pixels() {
        let b = LabelBox {
            at: String::new(),
            x: 264.0,
            y: 152.0,
            width: 213.0,
            height: 379.0,
        };
        let square = Stored {
            shard: String::new(),
            width: 64,
            height: 64,
            cols: 1024,
            rows: 1024,
        };
        // 264/16 = 16.5, 477/16 = 29.8, 152/16 = 9.5, 531/16 = 33.2.
        assert_eq!(scaled_box(&b, &square), [16, 9, 30, 34]);
        let edge = LabelBox {
            x: 16.0,
            y: 0.0,
            width: 1008.0,
            height: 1024.0,
            ..b.clone()
        };
        assert_eq!(scaled_box(&edge, &square), [1, 0, 64, 64]);
        // 488 × 460 to 68 × 64: each axis by its own factor.
        let wide = Stored {
            shard: String::new(),
            width: 68,
            height: 64,
            cols: 488,
            rows: 460,
        };
        let b = LabelBox {
            x: 100.0,
            y: 115.0,
            width: 100.0,
            height: 230.0,
            ..b
        };
        // x: 100·68/488 = 13.93, 200·68/488 = 27.87; y: 16, 48 exactly.
        assert_eq!(scaled_box(&b, &wide), [13, 16, 28, 48]);
    }

    #[test]
    fn a_box_must_lie_inside_its_image() {
        let b = |x: f64, y: f64, width: f64, height: f64| LabelBox {
            at: format!("{x},{y}"),
            x,
            y,
            width,
            height,
        };
        let inside = [b(0.0, 0.0, 1024.0, 1024.0), b(1000.0, 10.0, 24.0, 5.0)];
        assert!(box_outside(&inside, 1024, 1024).is_none());
        let wide = [inside[0].clone(), b(1000.0, 10.0, 24.5, 5.0)];
        assert_eq!(box_outside(&wide, 1024, 1024), Some(&wide[1]));
        assert!(box_outside(&[b(0.0, 500.0, 10.0, 600.0)], 1024, 1024).is_some());
    }

    #[test]
    fn an_unrecognised_layout_names_what_was_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let err = layout(dir.path()).unwrap_err().to_string();
        assert!(err.contains("stage_2_train_labels.csv"), "{err}");
        std::fs::write(dir.path().join("stage_2_train_labels.csv"), "x\n").unwrap();
        let err = layout(dir.path()).unwrap_err().to_string();
        assert!(err.contains("stage_2_train_images/"), "{err}");
        std::fs::create_dir(dir.path().join("stage_2_train_images")).unwrap();
        let (_, classes, _) = layout(dir.path()).unwrap();
        assert!(classes.is_none());
    }
}
