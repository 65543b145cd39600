//! Training curves: one PNG per numeric field of a run's `metrics.jsonl`
//! (losses, learning rate, throughput), each a line against `step`, drawn
//! with the workspace's `charts`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use charts::plotters::prelude::*;
use charts::{ChartError, style};

/// The field every line must carry: the x axis.
pub const STEP: &str = "step";
const SIZE: (u32, u32) = (900, 540);
const LINE: RGBColor = RGBColor(31, 119, 180);

/// Why the curves could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum CurveError {
    /// The metrics file or the output folder could not be read or made.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A line is not a JSON object with a numeric `step`.
    #[error("{path} line {line}: {reason}")]
    BadLine {
        /// The metrics file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A chart could not be drawn or saved.
    #[error(transparent)]
    Chart(#[from] ChartError),
}

/// Each numeric field's `(step, value)` points, sorted by step, by field
/// name.
pub type Curves = BTreeMap<String, Vec<(f64, f64)>>;

/// Reads a metrics JSON Lines file: one object per line with a numeric
/// `step`; every other numeric field becomes a curve, other fields are
/// ignored, and a line may lack any field but `step`. Blank lines are
/// skipped.
pub fn read_metrics(path: &Path) -> Result<Curves, CurveError> {
    let io_err = |source| CurveError::Io {
        path: path.to_path_buf(),
        source,
    };
    let reader = BufReader::new(File::open(path).map_err(io_err)?);
    let mut curves = Curves::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(io_err)?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason| CurveError::BadLine {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        let object = value
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let step = object
            .get(STEP)
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| bad(format!("no numeric `{STEP}`")))?;
        for (field, v) in object {
            if let (true, Some(v)) = (field != STEP, v.as_f64()) {
                curves.entry(field.clone()).or_default().push((step, v));
            }
        }
    }
    // A resumed run may log steps out of order; a line chart wants them sorted.
    curves
        .values_mut()
        .for_each(|points| points.sort_by(|a, b| a.0.total_cmp(&b.0)));
    Ok(curves)
}

/// Draws `<field>.png` in `out_dir` (created if needed) for every numeric
/// field of the metrics file `jsonl` (see [`read_metrics`]); returns the
/// files written, in field-name order. Characters other than ASCII letters,
/// digits, `-`, `_` and `.` in a field name become `_` in its file name.
pub fn plot_metrics(jsonl: &Path, out_dir: &Path) -> Result<Vec<PathBuf>, CurveError> {
    let curves = read_metrics(jsonl)?;
    std::fs::create_dir_all(out_dir).map_err(|source| CurveError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    curves
        .iter()
        .map(|(field, points)| {
            let path = out_dir.join(format!("{}.png", file_stem(field)));
            draw_curve(&path, field, points)?;
            Ok(path)
        })
        .collect()
}

fn file_stem(field: &str) -> String {
    let keep = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    field
        .chars()
        .map(|c| if keep(c) { c } else { '_' })
        .collect()
}

/// One line chart of `points` against step, titled and labelled `field`.
fn draw_curve(path: &Path, field: &str, points: &[(f64, f64)]) -> Result<(), CurveError> {
    charts::render(path, SIZE, |root| {
        let (x0, x1) = padded_range(points.iter().map(|p| p.0), 0.0);
        let (y0, y1) = padded_range(points.iter().map(|p| p.1), 0.05);
        let mut chart = ChartBuilder::on(root)
            .caption(field, style(24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(STEP)
            .y_desc(field)
            .label_style(style(14))
            .axis_desc_style(style(16))
            .draw()?;
        chart.draw_series(LineSeries::new(
            points.iter().copied(),
            LINE.stroke_width(2),
        ))?;
        if points.len() == 1 {
            // A single point draws no line; mark it.
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, LINE.filled())))?;
        }
        Ok(())
    })?;
    Ok(())
}

/// The values' range widened by `pad` of its span on each side; a single
/// value gets a unit-wide (or 10%-wide) range so the axis is not empty.
fn padded_range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let span = hi - lo;
    if span > 0.0 {
        (lo - pad * span, hi + pad * span)
    } else {
        let half = if lo == 0.0 { 1.0 } else { 0.1 * lo.abs() };
        (lo - half, hi + half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"{"step": 1, "loss": 2.5, "loss_align": 1.2, "lr": 0.0001, "run": "a"}
{"step": 2, "loss": 2.1, "loss_mim": 0.8, "images_per_s": 410.5, "note": null}

{"step": 3, "loss": 1.9, "loss_align": 1.0, "lr": 0.0002, "ok": true}
"#;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("metrics.jsonl");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reads_numeric_fields_against_step() {
        let dir = tempfile::tempdir().unwrap();
        let curves = read_metrics(&write(dir.path(), METRICS)).unwrap();
        let fields: Vec<&str> = curves.keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            ["images_per_s", "loss", "loss_align", "loss_mim", "lr"]
        );
        assert_eq!(curves["loss"], [(1.0, 2.5), (2.0, 2.1), (3.0, 1.9)]);
        assert_eq!(curves["loss_align"], [(1.0, 1.2), (3.0, 1.0)]);
        assert_eq!(curves["loss_mim"], [(2.0, 0.8)]);
    }

    #[test]
    fn writes_a_png_per_field() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("curves");
        let written = plot_metrics(&write(dir.path(), METRICS), &out).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "images_per_s.png",
                "loss.png",
                "loss_align.png",
                "loss_mim.png",
                "lr.png"
            ]
        );
        for path in &written {
            let bytes = std::fs::read(path).unwrap();
            assert!(
                bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
                "{path:?} is not a PNG"
            );
            let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
            assert_eq!(img.dimensions(), SIZE);
            // Something besides the white background was drawn: the line.
            assert!(
                img.pixels().any(|p| p.0 == [LINE.0, LINE.1, LINE.2]),
                "{path:?}"
            );
        }
    }

    #[test]
    fn bad_line_names_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "{\"step\": 1, \"loss\": 2}\n\n{\"step\": 2, \"loss\": \n",
        );
        let err = plot_metrics(&path, dir.path()).unwrap_err();
        assert!(
            matches!(err, CurveError::BadLine { line: 3, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("metrics.jsonl line 3"), "{err}");
    }

    #[test]
    fn line_without_step_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "{\"step\": 1}\n{\"loss\": 2}\n");
        let err = read_metrics(&path).unwrap_err();
        assert!(
            matches!(err, CurveError::BadLine { line: 2, .. }),
            "{err:?}"
        );
        let path = write(dir.path(), "[1, 2]\n");
        assert!(matches!(
            read_metrics(&path),
            Err(CurveError::BadLine { line: 1, .. })
        ));
    }

    #[test]
    fn file_names_stay_inside_the_folder() {
        assert_eq!(file_stem("val/auc mean"), "val_auc_mean");
        assert_eq!(file_stem("loss_mlm"), "loss_mlm");
    }
}
