//! The PNG charts of the report, drawn with the workspace's `charts`.

use std::collections::BTreeMap;
use std::path::Path;

use charts::plotters::prelude::*;
use charts::plotters::style::text_anchor::{HPos, Pos, VPos};
use charts::{Area, ChartError, DrawResult, render, style};

use super::collect::Detail;
use super::{Frequency, LabelCounts, Stats, StatsError};

/// `label_prevalence_<source>.png`, one per source with labels.
pub(super) fn label_chart(source: &str) -> String {
    format!("label_prevalence_{source}.png")
}
/// Top PadChest finding labels.
pub(super) const FINDING_LABELS: &str = "finding_labels.png";
/// Report length in characters.
pub(super) const REPORT_CHARS: &str = "report_chars.png";
/// Report length in tokens.
pub(super) const REPORT_TOKENS: &str = "report_tokens.png";
/// Entities per report.
pub(super) const ENTITIES_PER_REPORT: &str = "entities_per_report.png";
/// Top entity strings.
pub(super) const ENTITY_TOP: &str = "entity_top.png";
/// Original and stored image sizes.
pub(super) const IMAGE_SIZES: &str = "image_sizes.png";
/// Pixel intensity histograms.
pub(super) const INTENSITY: &str = "intensity.png";

const BAR: RGBColor = RGBColor(76, 114, 176);
const HIGHLIGHT: RGBColor = RGBColor(214, 39, 40);
const POSITIVE: RGBColor = RGBColor(214, 39, 40);
const NEGATIVE: RGBColor = RGBColor(76, 114, 176);
const UNCERTAIN: RGBColor = RGBColor(255, 160, 40);
const BLANK: RGBColor = RGBColor(215, 215, 215);
/// One colour per source, in name order (tab10's first colours).
const SOURCE_COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Draws every chart that has data into `out`; returns their file names in
/// the order `stats.md` shows them.
pub(super) fn draw_all(
    stats: &Stats,
    detail: &Detail,
    out: &Path,
) -> Result<Vec<String>, StatsError> {
    let mut written = Vec::new();
    let mut save = |name: String, draw: &dyn Fn(&Path) -> Result<(), ChartError>| {
        draw(&out.join(&name))?;
        written.push(name);
        Ok::<_, StatsError>(())
    };
    for (source, counts) in &stats.labels {
        if counts
            .iter()
            .any(|c| c.positive + c.negative + c.uncertain + c.other > 0)
        {
            let title = format!("CheXpert labels, {source} rows");
            save(label_chart(source), &|p| stacked_labels(p, &title, counts))?;
        }
    }
    if !stats.finding_labels.top.is_empty() {
        save(FINDING_LABELS.into(), &|p| {
            horizontal_bars(
                p,
                "Most frequent PadChest finding labels",
                "rows",
                &stats.finding_labels.top,
            )
        })?;
    }
    let text = &stats.text;
    if text.reports > 0 {
        let h = &text.chars_histogram;
        save(REPORT_CHARS.into(), &|p| {
            vertical_bars(
                p,
                "Report length",
                "characters",
                h.start,
                h.width,
                &h.counts,
                None,
            )
        })?;
    }
    if text.tokens.count > 0 {
        let label = format!("fills the context ({} tokens)", text.context_length);
        let mark = (text.context_length as usize, label.as_str());
        save(REPORT_TOKENS.into(), &|p| {
            vertical_bars(
                p,
                "Report length",
                "tokens",
                0,
                1,
                &text.tokens_per_length,
                Some(mark),
            )
        })?;
    }
    if stats.entities.reports > 0 {
        let counts = &stats.entities.per_report_counts;
        save(ENTITIES_PER_REPORT.into(), &|p| {
            vertical_bars(p, "Entities per report", "entities", 0, 1, counts, None)
        })?;
    }
    if !stats.entities.top.is_empty() {
        save(ENTITY_TOP.into(), &|p| {
            horizontal_bars(p, "Most frequent entities", "spans", &stats.entities.top)
        })?;
    }
    if detail.orig_sizes.values().any(|s| !s.is_empty()) {
        save(IMAGE_SIZES.into(), &|p| image_sizes(p, detail))?;
    }
    if stats.images.pixels > 0 {
        save(INTENSITY.into(), &|p| intensity(p, &stats.images.intensity))?;
    }
    Ok(written)
}

/// Cuts a label to `max` characters so long strings do not eat the chart.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max - 1).chain(['…']).collect()
    }
}

/// A strip of coloured squares and names, drawn above the chart: plotters'
/// own legend sits inside the plot, where full-width bars would hide it.
fn legend(area: &Area<'_>, entries: &[(String, RGBColor)]) -> DrawResult {
    let mut x = 70;
    for (name, colour) in entries {
        area.draw(&Rectangle::new([(x, 10), (x + 14, 24)], colour.filled()))?;
        area.draw(&Text::new(
            name.clone(),
            (x + 20, 17),
            style(15).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
        x += 40 + 9 * name.chars().count() as i32;
    }
    Ok(())
}

/// One bar per item, most frequent at the top, the count at the bar's end.
fn horizontal_bars(
    path: &Path,
    title: &str,
    x_desc: &str,
    items: &[Frequency],
) -> Result<(), ChartError> {
    const MAX_LABEL: usize = 40;
    let n = items.len();
    let max = items.iter().map(|f| f.count).max().unwrap_or(0).max(1);
    let longest = items
        .iter()
        .map(|f| f.value.chars().count().min(MAX_LABEL))
        .max()
        .unwrap_or(0);
    let label_area = (longest as u32 * 8 + 24).clamp(60, 360);
    let height = 110 + 24 * n as u32;
    render(path, (900, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, style(22))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(label_area)
            .build_cartesian_2d(0u64..max + max / 8 + 1, rows(n))?;
        // Row `i` of `items` is drawn at `n - 1 - i`, so the first is on top.
        let name = |y: usize| {
            n.checked_sub(y + 1)
                .and_then(|i| items.get(i))
                .map_or(String::new(), |f| shorten(&f.value, MAX_LABEL))
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(y) => name(*y),
                _ => String::new(),
            })
            .x_desc(x_desc)
            .label_style(style(14))
            .axis_desc_style(style(15))
            .draw()?;
        chart.draw_series(items.iter().enumerate().map(|(i, f)| {
            let y = n - 1 - i;
            let mut bar = Rectangle::new(
                [
                    (0, SegmentValue::Exact(y)),
                    (f.count, SegmentValue::Exact(y + 1)),
                ],
                BAR.filled(),
            );
            bar.set_margin(3, 3, 0, 0);
            bar
        }))?;
        chart.draw_series(items.iter().enumerate().map(|(i, f)| {
            Text::new(
                format!(" {}", f.count),
                (f.count, SegmentValue::CenterOf(n - 1 - i)),
                style(13).pos(Pos::new(HPos::Left, VPos::Center)),
            )
        }))?;
        Ok(())
    })
}

/// The 14 classes, each a bar split into positive, negative, uncertain and
/// blank, as a share of the source's rows.
fn stacked_labels(path: &Path, title: &str, counts: &[LabelCounts]) -> Result<(), ChartError> {
    type Part = (&'static str, RGBColor, fn(&LabelCounts) -> u64);
    let parts: [Part; 4] = [
        ("positive", POSITIVE, |c| c.positive),
        ("negative", NEGATIVE, |c| c.negative),
        ("uncertain", UNCERTAIN, |c| c.uncertain),
        ("blank", BLANK, |c| c.blank + c.other),
    ];
    let n = counts.len();
    render(path, (1000, 150 + 30 * n as u32), |root| {
        let (top, body) = root.split_vertically(40);
        legend(
            &top,
            &parts.map(|(name, colour, _)| (name.to_string(), colour)),
        )?;
        let mut chart = ChartBuilder::on(&body)
            .caption(title, style(22))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(230)
            .build_cartesian_2d(0f64..100f64, rows(n))?;
        let name = |y: usize| {
            n.checked_sub(y + 1)
                .and_then(|i| counts.get(i))
                .map_or(String::new(), |c| c.class.clone())
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(y) => name(*y),
                _ => String::new(),
            })
            .x_label_formatter(&|x| format!("{x:.0}%"))
            .x_desc("share of rows")
            .label_style(style(14))
            .axis_desc_style(style(15))
            .draw()?;
        for (k, &(_, colour, value)) in parts.iter().enumerate() {
            chart.draw_series(counts.iter().enumerate().map(|(i, c)| {
                let total = parts.iter().map(|p| p.2(c)).sum::<u64>().max(1) as f64;
                let before: u64 = parts[..k].iter().map(|p| p.2(c)).sum();
                let (x0, x1) = (
                    100.0 * before as f64 / total,
                    100.0 * (before + value(c)) as f64 / total,
                );
                let y = n - 1 - i;
                let mut bar = Rectangle::new(
                    [
                        (x0, SegmentValue::Exact(y)),
                        (x1, SegmentValue::Exact(y + 1)),
                    ],
                    colour.filled(),
                );
                bar.set_margin(4, 4, 0, 0);
                bar
            }))?;
        }
        Ok(())
    })
}

/// A histogram: bar `i` covers `start + i·width ..= start + (i+1)·width - 1`;
/// `mark` draws one bin in another colour and names it in the legend.
fn vertical_bars(
    path: &Path,
    title: &str,
    x_desc: &str,
    start: i64,
    width: i64,
    counts: &[u64],
    mark: Option<(usize, &str)>,
) -> Result<(), ChartError> {
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    let end = start + width * counts.len().max(1) as i64;
    // Widen the axis so the marked bin shows even when no row reaches it.
    let end = mark.map_or(end, |(bin, _)| end.max(start + width * (bin as i64 + 1)));
    render(path, (900, 480), |root| {
        let body = match mark {
            Some((_, name)) => {
                let (top, body) = root.split_vertically(40);
                legend(&top, &[("rows".into(), BAR), (name.to_string(), HIGHLIGHT)])?;
                body
            }
            None => root.clone(),
        };
        let mut chart = ChartBuilder::on(&body)
            .caption(title, style(22))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(start..end, 0u64..max + max / 10 + 1)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(x_desc)
            .y_desc("rows")
            .label_style(style(14))
            .axis_desc_style(style(15))
            .draw()?;
        chart.draw_series(
            counts
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, &n)| {
                    let x0 = start + width * i as i64;
                    let colour = if mark.is_some_and(|(bin, _)| bin == i) {
                        HIGHLIGHT
                    } else {
                        BAR
                    };
                    let mut bar = Rectangle::new([(x0, 0), (x0 + width, n)], colour.filled());
                    bar.set_margin(0, 0, 1, 1);
                    bar
                }),
        )?;
        Ok(())
    })
}

/// `n` bar slots, 0 at the bottom. Plotters' integer ranges are inclusive,
/// so `0..n` would leave an empty slot above the last bar.
fn rows(
    n: usize,
) -> charts::plotters::coord::ranged1d::SegmentedCoord<
    charts::plotters::coord::types::RangedCoordusize,
> {
    (0..n.max(1) - 1).into_segmented()
}

fn source_colours<'a>(names: impl Iterator<Item = &'a String>) -> Vec<(String, RGBColor)> {
    names
        .enumerate()
        .map(|(i, name)| (name.clone(), SOURCE_COLOURS[i % SOURCE_COLOURS.len()]))
        .collect()
}

/// Two scatter plots, original and stored sizes; one dot per distinct size,
/// its area growing with the number of images of that size.
fn image_sizes(path: &Path, detail: &Detail) -> Result<(), ChartError> {
    let colours = source_colours(detail.orig_sizes.keys());
    render(path, (1100, 520), |root| {
        let (top, body) = root.split_vertically(40);
        legend(&top, &colours)?;
        let (left, right) = body.split_horizontally(550);
        scatter(
            &left,
            "Original size",
            "columns",
            "rows",
            &detail.orig_sizes,
            &colours,
        )?;
        scatter(
            &right,
            "Stored size",
            "width",
            "height",
            &detail.stored_sizes,
            &colours,
        )
    })
}

fn scatter(
    area: &Area<'_>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    sizes: &BTreeMap<String, BTreeMap<(i32, i32), u64>>,
    colours: &[(String, RGBColor)],
) -> DrawResult {
    let all = || sizes.values().flat_map(|s| s.keys());
    let max_w = all().map(|s| s.0).max().unwrap_or(1).max(1);
    let max_h = all().map(|s| s.1).max().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(title, style(20))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0..max_w + max_w / 10 + 1, 0..max_h + max_h / 10 + 1)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(style(13))
        .axis_desc_style(style(14))
        .draw()?;
    for (source, points) in sizes {
        let colour = colours
            .iter()
            .find(|(name, _)| name == source)
            .map_or(BAR, |c| c.1);
        chart.draw_series(points.iter().map(|(&(w, h), &n)| {
            let radius = (2.0 + 1.5 * (n as f64).ln()).min(12.0) as u32;
            Circle::new((w, h), radius, colour.mix(0.6).filled())
        }))?;
    }
    Ok(())
}

/// The share of pixels at each intensity, one line per source.
fn intensity(path: &Path, histograms: &BTreeMap<String, Vec<u64>>) -> Result<(), ChartError> {
    let colours = source_colours(histograms.keys());
    let shares: Vec<Vec<f64>> = histograms
        .values()
        .map(|h| {
            let total = h.iter().sum::<u64>().max(1) as f64;
            h.iter().map(|&n| 100.0 * n as f64 / total).collect()
        })
        .collect();
    let max = shares
        .iter()
        .flatten()
        .copied()
        .fold(0.0, f64::max)
        .max(1e-3);
    render(path, (900, 480), |root| {
        let (top, body) = root.split_vertically(40);
        legend(&top, &colours)?;
        let mut chart = ChartBuilder::on(&body)
            .caption("Stored pixel intensities", style(22))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(0i32..255, 0f64..max * 1.08)?;
        chart
            .configure_mesh()
            .x_desc("pixel value")
            .y_desc("% of the source's pixels")
            .y_label_formatter(&|y| format!("{y:.1}"))
            .label_style(style(14))
            .axis_desc_style(style(15))
            .draw()?;
        for (share, (_, colour)) in shares.iter().zip(&colours) {
            chart.draw_series(LineSeries::new(
                share.iter().enumerate().map(|(v, &s)| (v as i32, s)),
                colour.stroke_width(2),
            ))?;
        }
        Ok(())
    })
}
