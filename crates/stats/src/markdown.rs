//! `stats.md`: the report a person reads. Short tables, the charts as
//! images, and any failed check at the very top.

use std::collections::BTreeMap;
use std::fmt::Write;

use schemas::Stage;

use super::charts::{
    ENTITIES_PER_REPORT, ENTITY_TOP, FINDING_LABELS, IMAGE_SIZES, INTENSITY, REPORT_CHARS,
    REPORT_TOKENS, label_chart,
};
use super::{Frequency, Stats, Summary};

/// Rows shown from the long top-N lists; the charts show all 30.
const TABLE_ROWS: usize = 10;
/// Reject reason groups shown.
const REASON_ROWS: usize = 20;

/// The whole report.
pub(super) fn render(stats: &Stats) -> String {
    let mut md = Md {
        out: String::new(),
        charts: &stats.charts,
    };
    md.line("# Shard statistics");
    md.line("");
    problems(&mut md, stats);
    folders(&mut md, stats);
    rows(&mut md, stats);
    labels(&mut md, stats);
    text(&mut md, stats);
    entities(&mut md, stats);
    images(&mut md, stats);
    rejects(&mut md, stats);
    md.out
}

/// The report being written, and the charts that exist to embed.
struct Md<'a> {
    out: String,
    charts: &'a [String],
}

impl Md<'_> {
    fn line(&mut self, s: &str) {
        self.out.push_str(s);
        self.out.push('\n');
    }

    /// Embeds a chart, if it was drawn.
    fn chart(&mut self, name: &str) {
        if self.charts.iter().any(|c| c == name) {
            let _ = writeln!(self.out, "![]({name})\n");
        }
    }

    fn table<const N: usize>(
        &mut self,
        head: [&str; N],
        rows: impl IntoIterator<Item = [String; N]>,
    ) {
        let _ = writeln!(self.out, "| {} |", head.map(cell).join(" | "));
        let align = head.map(|h| {
            if h.is_empty() || is_text_column(h) {
                "---"
            } else {
                "---:"
            }
        });
        let _ = writeln!(self.out, "|{}|", align.join("|"));
        for row in rows {
            let _ = writeln!(self.out, "| {} |", row.map(|c| cell(&c)).join(" | "));
        }
        self.out.push('\n');
    }
}

/// Columns holding names rather than numbers are left-aligned.
fn is_text_column(head: &str) -> bool {
    matches!(
        head,
        "folder"
            | "source"
            | "encoding"
            | "class"
            | "label"
            | "entity"
            | "stage"
            | "reason"
            | "example"
            | "size"
            | "measure"
            | "split"
            | "view"
            | "reconciles"
            | "agree"
    )
}

/// Escapes what would break a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "–".into()
    } else {
        format!("{:.1}%", 100.0 * part as f64 / whole as f64)
    }
}

/// Thousands separated by a thin space, so large counts read at a glance.
fn num(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(ch);
    }
    out
}

fn summary_row(name: &str, s: &Summary) -> [String; 5] {
    if s.count == 0 {
        return [name.into(), "–".into(), "–".into(), "–".into(), "–".into()];
    }
    [
        name.into(),
        s.min.to_string(),
        s.median.to_string(),
        format!("{:.1}", s.mean),
        s.max.to_string(),
    ]
}

fn problems(md: &mut Md<'_>, stats: &Stats) {
    if stats.problems.is_empty() {
        md.line(
            "All checks pass: every manifest reconciles (`seen = written + filtered + rejected`),",
        );
        md.line(
            "the shards hold the rows their manifests list, and the reject logs match the counts.",
        );
        md.line("");
        return;
    }
    md.line("> [!CAUTION]");
    let _ = writeln!(
        md.out,
        "> **{} check(s) FAILED: the counts below do not add up.**",
        stats.problems.len()
    );
    md.line(">");
    for p in &stats.problems {
        let _ = writeln!(md.out, "> - {}", cell(p));
    }
    md.line("");
}

fn folders(md: &mut Md<'_>, stats: &Stats) {
    md.line("## Folders");
    md.line("");
    let total = &stats.counts;
    let rows = stats.folders.iter().map(|f| {
        [
            f.path.clone(),
            f.source.name().into(),
            encoding_name(f.encoding),
            f.shards.to_string(),
            num(f.counts.seen),
            num(f.counts.written),
            num(f.counts.filtered),
            num(f.counts.rejected_total()),
            if f.reconciles {
                "yes".into()
            } else {
                "**NO**".into()
            },
        ]
    });
    let footer = (stats.folders.len() > 1).then(|| {
        [
            "**all**".into(),
            String::new(),
            String::new(),
            stats
                .folders
                .iter()
                .map(|f| f.shards)
                .sum::<usize>()
                .to_string(),
            num(total.seen),
            num(total.written),
            num(total.filtered),
            num(total.rejected_total()),
            if stats.folders.iter().all(|f| f.reconciles) {
                "yes".into()
            } else {
                "**NO**".into()
            },
        ]
    });
    md.table(
        [
            "folder",
            "source",
            "encoding",
            "shards",
            "seen",
            "written",
            "filtered",
            "rejected",
            "reconciles",
        ],
        rows.chain(footer),
    );
}

fn encoding_name(e: schemas::ImageEncoding) -> String {
    match e {
        schemas::ImageEncoding::Raw => "raw".into(),
        schemas::ImageEncoding::Png => "png".into(),
        schemas::ImageEncoding::Jpeg { quality } => format!("jpeg q{quality}"),
    }
}

/// A source × key table (split or view), with a total column and, for
/// several sources, a total row (`all`, the flat counts).
fn crosstab(
    md: &mut Md<'_>,
    by: &BTreeMap<String, BTreeMap<String, u64>>,
    all: &BTreeMap<String, u64>,
    rows: u64,
) {
    let keys: Vec<&String> = {
        let mut k: Vec<_> = by.values().flat_map(|m| m.keys()).collect();
        k.sort();
        k.dedup();
        k
    };
    let _ = writeln!(
        md.out,
        "| source | {} | total |",
        keys.iter().map(|k| cell(k)).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(md.out, "|---|{}---:|", "---:|".repeat(keys.len()));
    for (source, counts) in by {
        let cells: Vec<String> = keys
            .iter()
            .map(|k| num(counts.get(*k).copied().unwrap_or(0)))
            .collect();
        let total: u64 = counts.values().sum();
        let _ = writeln!(
            md.out,
            "| {} | {} | {} |",
            cell(source),
            cells.join(" | "),
            num(total)
        );
    }
    if by.len() > 1 {
        let cells: Vec<String> = keys
            .iter()
            .map(|k| num(all.get(*k).copied().unwrap_or(0)))
            .collect();
        let _ = writeln!(
            md.out,
            "| **all** | {} | {} |",
            cells.join(" | "),
            num(rows)
        );
    }
    md.out.push('\n');
}

fn rows(md: &mut Md<'_>, stats: &Stats) {
    md.line("## Rows");
    md.line("");
    let _ = writeln!(
        md.out,
        "**{}** rows: **{}** paired with a report ({}), **{}** image only ({}).\n",
        num(stats.rows),
        num(stats.paired),
        pct(stats.paired, stats.rows),
        num(stats.unpaired),
        pct(stats.unpaired, stats.rows)
    );
    md.line("By split:");
    md.line("");
    crosstab(md, &stats.by_source_split, &stats.by_split, stats.rows);
    md.line("By view:");
    md.line("");
    crosstab(md, &stats.by_source_view, &stats.by_view, stats.rows);
}

fn labels(md: &mut Md<'_>, stats: &Stats) {
    for (source, counts) in &stats.labels {
        let name = label_chart(source);
        if !stats.charts.contains(&name) {
            continue;
        }
        let rows = stats.by_source.get(source).copied().unwrap_or(0);
        let _ = writeln!(
            md.out,
            "## CheXpert labels: {source} ({} rows)\n",
            num(rows)
        );
        md.chart(&name);
        md.table(
            [
                "class",
                "positive",
                "negative",
                "uncertain",
                "blank",
                "% positive",
            ],
            counts.iter().map(|c| {
                [
                    c.class.clone(),
                    num(c.positive),
                    num(c.negative),
                    num(c.uncertain),
                    num(c.blank + c.other),
                    pct(c.positive, rows),
                ]
            }),
        );
        let other: u64 = counts.iter().map(|c| c.other).sum();
        if other > 0 {
            let _ = writeln!(
                md.out,
                "**{} label values are not 1, 0, -1 or blank** (counted as blank above).\n",
                num(other)
            );
        }
    }
    let f = &stats.finding_labels;
    if f.labels > 0 {
        md.line("## PadChest finding labels");
        md.line("");
        let _ = writeln!(
            md.out,
            "{} labels over {} rows; {} distinct.\n",
            num(f.labels),
            num(f.rows_with_labels),
            num(f.distinct)
        );
        md.chart(FINDING_LABELS);
        top_table(
            md,
            "label",
            &f.top,
            f.rows_with_labels,
            "% of labelled rows",
        );
    }
}

fn top_table(md: &mut Md<'_>, what: &str, top: &[Frequency], whole: u64, share: &str) {
    md.table(
        ["#", what, "count", share],
        top.iter().take(TABLE_ROWS).enumerate().map(|(i, f)| {
            [
                (i + 1).to_string(),
                f.value.clone(),
                num(f.count),
                pct(f.count, whole),
            ]
        }),
    );
}

fn text(md: &mut Md<'_>, stats: &Stats) {
    let t = &stats.text;
    if t.reports == 0 && t.tokens.count == 0 {
        return;
    }
    md.line("## Report text");
    md.line("");
    let _ = writeln!(
        md.out,
        "{} reports. **{}** truncated to the {}-token context ({}); {} fill it exactly.\n",
        num(t.reports),
        num(t.truncated),
        t.context_length,
        pct(t.truncated, t.tokens.count),
        num(t.at_context),
    );
    md.table(
        ["measure", "min", "median", "mean", "max"],
        [
            summary_row("characters", &t.chars),
            summary_row("tokens", &t.tokens),
        ],
    );
    md.chart(REPORT_CHARS);
    md.chart(REPORT_TOKENS);
}

fn entities(md: &mut Md<'_>, stats: &Stats) {
    let e = &stats.entities;
    if e.reports == 0 {
        return;
    }
    md.line("## Entities");
    md.line("");
    let _ = writeln!(
        md.out,
        "{} spans over {} reports (median {} per report); {} distinct strings.\n",
        num(e.spans),
        num(e.reports),
        e.per_report.median,
        num(e.distinct)
    );
    if e.invalid_spans > 0 {
        let _ = writeln!(
            md.out,
            "**{} spans do not fit their text** and were not counted as strings.\n",
            num(e.invalid_spans)
        );
    }
    md.table(
        ["source", "reports", "share"],
        e.by_source
            .iter()
            .map(|(s, &n)| [s.clone(), num(n), pct(n, e.reports)]),
    );
    if !e.by_label.is_empty() {
        md.table(
            ["label", "spans", "share"],
            e.by_label
                .iter()
                .map(|(l, &n)| [l.clone(), num(n), pct(n, e.spans)]),
        );
    }
    md.chart(ENTITIES_PER_REPORT);
    md.chart(ENTITY_TOP);
    top_table(md, "entity", &e.top, e.spans, "% of spans");
}

fn images(md: &mut Md<'_>, stats: &Stats) {
    let im = &stats.images;
    md.line("## Images");
    md.line("");
    md.table(
        ["measure", "min", "median", "mean", "max"],
        [
            summary_row("stored height", &im.stored_height),
            summary_row("stored width", &im.stored_width),
            summary_row("original rows", &im.orig_rows),
            summary_row("original columns", &im.orig_cols),
        ],
    );
    let common = |list: &[Frequency]| {
        list.iter()
            .take(5)
            .map(|f| format!("{} ({})", f.value, num(f.count)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        md.out,
        "Most common stored sizes (width×height): {}.\n",
        common(&im.common_stored)
    );
    let _ = writeln!(
        md.out,
        "Most common original sizes (columns×rows): {}.\n",
        common(&im.common_orig)
    );
    md.chart(IMAGE_SIZES);

    md.line("### Intensities");
    md.line("");
    let _ = writeln!(
        md.out,
        "{} images decoded, {} pixels.\n",
        num(im.decoded),
        num(im.pixels)
    );
    if im.undecodable > 0 {
        let _ = writeln!(
            md.out,
            "**{} images could not be decoded**; the first:\n",
            num(im.undecodable)
        );
        for e in &im.undecodable_examples {
            let _ = writeln!(md.out, "- {}", cell(e));
        }
        md.line("");
    }
    md.table(
        ["source", "pixels", "mean", "at 0", "at 255"],
        im.intensity.iter().map(|(source, h)| {
            let total: u64 = h.iter().sum();
            let sum: u64 = h.iter().enumerate().map(|(v, &n)| v as u64 * n).sum();
            let mean = if total == 0 {
                "–".into()
            } else {
                format!("{:.1}", sum as f64 / total as f64)
            };
            [
                source.clone(),
                num(total),
                mean,
                pct(h[0], total),
                pct(h[255], total),
            ]
        }),
    );
    md.chart(INTENSITY);
}

fn rejects(md: &mut Md<'_>, stats: &Stats) {
    let r = &stats.rejects;
    md.line("## Rejects");
    md.line("");
    let manifest = &stats.counts.rejected;
    md.table(
        ["stage", "in rejects.jsonl", "in manifests", "agree"],
        Stage::ALL.iter().filter_map(|stage| {
            let (logged, counted) = (
                r.by_stage.get(stage).copied().unwrap_or(0),
                manifest.get(stage).copied().unwrap_or(0),
            );
            (logged + counted > 0).then(|| {
                [
                    stage.name().into(),
                    num(logged),
                    num(counted),
                    if logged == counted {
                        "yes".into()
                    } else {
                        "**NO**".into()
                    },
                ]
            })
        }),
    );
    if r.records == 0 {
        md.line("No rejects.");
        return;
    }
    md.table(
        ["stage", "reason", "count", "example"],
        r.reasons.iter().take(REASON_ROWS).map(|g| {
            [
                g.stage.name().into(),
                g.reason.clone(),
                num(g.count),
                g.example.chars().take(120).collect(),
            ]
        }),
    );
    if r.reasons.len() > REASON_ROWS {
        let _ = writeln!(
            md.out,
            "… and {} more groups (all in stats.json).\n",
            r.reasons.len() - REASON_ROWS
        );
    }
}
