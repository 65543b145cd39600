use std::path::{Path, PathBuf};

use schemas::{
    CHEXPERT_CLASSES, Counts, ImageEncoding, ImagePolicy, Manifest, REJECTS_FILE, Reject,
    ShardEntry, Source, Stage,
};

use super::*;

/// One row of a test shard; what a test does not set is null or empty.
#[derive(Default)]
struct Row {
    source: &'static str,
    id: &'static str,
    split: &'static str,
    view: &'static str,
    /// Width, height and one value for every pixel.
    image: (u32, u32, u8),
    text: Option<&'static str>,
    tokens: Option<usize>,
    truncated: Option<bool>,
    /// (start, end, label) in characters.
    spans: Option<Vec<(i32, i32, &'static str)>>,
    entity_source: Option<&'static str>,
    /// (shard column name of the class, value).
    labels: Vec<(&'static str, i8)>,
    finding_labels: Vec<&'static str>,
}

impl Row {
    fn pixels(&self) -> Vec<u8> {
        vec![self.image.2; (self.image.0 * self.image.1) as usize]
    }
}

/// Stores `pixels` as `encoding`, as ingest's writer does (the report reads
/// the shard format, not ingest, so the tests write it with `image` directly).
fn encode(pixels: &[u8], width: u32, height: u32, encoding: ImageEncoding) -> Vec<u8> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    match encoding {
        ImageEncoding::Raw => out.extend_from_slice(pixels),
        ImageEncoding::Png => image::codecs::png::PngEncoder::new(&mut out)
            .write_image(pixels, width, height, image::ExtendedColorType::L8)
            .unwrap(),
        ImageEncoding::Jpeg { quality } => {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
                .write_image(pixels, width, height, image::ExtendedColorType::L8)
                .unwrap()
        }
    }
    out
}

/// Writes `rows` as one shard through the shard format's own writer.
fn write_shard(path: &Path, rows: &[Row], encoding: ImageEncoding) {
    let rows: Vec<shards::Row> = rows
        .iter()
        .map(|r| {
            let mut labels = [None; 14];
            for (i, (_, class)) in CHEXPERT_CLASSES.iter().enumerate() {
                labels[i] = r.labels.iter().find(|(c, _)| c == class).map(|l| l.1);
            }
            let text = r.text.map(str::to_string);
            shards::Row {
                source: r.source.into(),
                subject_id: r.id.into(),
                study_id: r.id.into(),
                image_id: r.id.into(),
                split: r.split.into(),
                view: r.view.into(),
                paired: r.text.is_some(),
                image: encode(&r.pixels(), r.image.0, r.image.1, encoding),
                image_height: r.image.1 as i32,
                image_width: r.image.0 as i32,
                // Originals ten times the stored size.
                orig_rows: 10 * r.image.1 as i32,
                orig_cols: 10 * r.image.0 as i32,
                bits_stored: 12,
                photometric: "MONOCHROME2".into(),
                report: text.clone(),
                findings: text.clone(),
                impression: text.clone(),
                text,
                token_ids: r.tokens.map(|n| (0..n as i32).collect()),
                entity_mask: r.tokens.map(|n| vec![false; n]),
                truncated: r.truncated,
                entity_spans: r.spans.as_ref().map(|spans| {
                    spans
                        .iter()
                        .map(|&(start, end, label)| schemas::EntitySpan {
                            start: start as usize,
                            end: end as usize,
                            label: label.into(),
                        })
                        .collect()
                }),
                entity_source: r.entity_source.map(str::to_string),
                labels,
                finding_labels: r.finding_labels.iter().map(|l| l.to_string()).collect(),
                ..Default::default()
            }
        })
        .collect();
    let bytes = shards::encode_rows(&rows, rows.len(), 3).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Writes a shard folder: one shard of `rows`, a manifest with `counts`, and
/// a reject log of `rejects`.
fn write_folder(
    dir: &Path,
    source: Source,
    encoding: ImageEncoding,
    rows: &[Row],
    counts: Counts,
    rejects: &[Reject],
) {
    std::fs::create_dir_all(dir).unwrap();
    let file = schemas::shard_file_name(0);
    write_shard(&dir.join(&file), rows, encoding);
    let sha256 = shards::sha256_file(&dir.join(&file)).unwrap();
    let manifest = Manifest {
        schema_version: schemas::SCHEMA_VERSION,
        tool_version: "test".into(),
        source,
        arguments: serde_json::json!({}),
        image_policy: ImagePolicy {
            encoding,
            ..ImagePolicy::default()
        },
        tokenizer: None,
        entities: None,
        counts,
        shards: vec![ShardEntry {
            file,
            rows: rows.len() as u64,
            sha256,
        }],
        part: None,
    };
    std::fs::write(
        dir.join(schemas::MANIFEST_FILE),
        serde_json::to_string_pretty(&manifest).unwrap(),
    )
    .unwrap();
    let log: String = rejects
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    std::fs::write(dir.join(REJECTS_FILE), log).unwrap();
}

/// "Ñ: small Effusion, no pneumothorax.": the leading two-byte character
/// makes byte offsets and character offsets differ.
const TEXT_1: &str = "Ñ: small Effusion, no pneumothorax.";

fn mimic_rows() -> Vec<Row> {
    vec![
        Row {
            source: "mimic",
            id: "m1",
            split: "train",
            view: "PA",
            image: (4, 3, 10),
            text: Some(TEXT_1),
            tokens: Some(12),
            truncated: Some(false),
            spans: Some(vec![(9, 17, "DISEASE"), (22, 34, "DISEASE")]),
            entity_source: Some("sidecar"),
            labels: vec![("pleural_effusion", 1), ("pneumothorax", 0)],
            ..Row::default()
        },
        Row {
            source: "mimic",
            id: "m2",
            split: "train",
            view: "AP",
            image: (4, 3, 200),
            text: Some("effusion"),
            tokens: Some(77),
            truncated: Some(true),
            spans: Some(vec![(0, 8, "DISEASE")]),
            entity_source: Some("lexicon"),
            labels: vec![("pleural_effusion", -1), ("cardiomegaly", 1)],
            ..Row::default()
        },
        Row {
            source: "mimic",
            id: "m3",
            split: "validate",
            view: "LATERAL",
            image: (2, 2, 0),
            text: Some("No acute findings."),
            tokens: Some(6),
            truncated: Some(false),
            spans: Some(vec![]),
            entity_source: Some("lexicon"),
            labels: vec![("no_finding", 1)],
            ..Row::default()
        },
    ]
}

fn padchest_rows() -> Vec<Row> {
    vec![
        Row {
            source: "padchest",
            id: "p1",
            split: "train",
            view: "PA",
            image: (3, 2, 128),
            finding_labels: vec!["normal"],
            ..Row::default()
        },
        Row {
            source: "padchest",
            id: "p2",
            split: "test",
            view: "L",
            image: (3, 3, 255),
            finding_labels: vec!["pleural effusion", "cardiomegaly"],
            ..Row::default()
        },
    ]
}

fn counts(seen: u64, written: u64, filtered: u64, rejected: &[(Stage, u64)]) -> Counts {
    Counts {
        seen,
        written,
        filtered,
        rejected: rejected.iter().copied().collect(),
    }
}

fn decode_reject(id: &str, bytes: u32) -> Reject {
    Reject {
        path: format!("files/{id}.dcm"),
        subject_id: None,
        study_id: None,
        image_id: Some(id.into()),
        stage: Stage::ImageDecode,
        reason: format!("pixel data truncated: expected 524288 bytes, found {bytes}"),
    }
}

/// Two folders: MIMIC stored raw (3 rows, 1 filtered, 2 rejected), PadChest
/// stored as PNG (2 rows).
fn fixture(root: &Path) -> Vec<PathBuf> {
    let (mimic, padchest) = (root.join("mimic"), root.join("padchest"));
    write_folder(
        &mimic,
        Source::Mimic,
        ImageEncoding::Raw,
        &mimic_rows(),
        counts(6, 3, 1, &[(Stage::ImageDecode, 2)]),
        &[decode_reject("d1", 10), decode_reject("d2", 2000)],
    );
    write_folder(
        &padchest,
        Source::Padchest,
        ImageEncoding::Png,
        &padchest_rows(),
        counts(2, 2, 0, &[]),
        &[],
    );
    vec![mimic, padchest]
}

#[test]
fn report_counts_rows_labels_tokens_entities_and_pixels() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = fixture(tmp.path());
    let stats = write_report(&dirs, &tmp.path().join("out")).unwrap();

    assert_eq!((stats.rows, stats.paired, stats.unpaired), (5, 3, 2));
    assert_eq!(stats.by_source["mimic"], 3);
    assert_eq!(stats.by_source["padchest"], 2);
    assert_eq!(stats.by_split["train"], 3);
    assert_eq!(stats.by_source_split["mimic"]["validate"], 1);
    assert_eq!(stats.by_source_view["padchest"]["L"], 1);
    assert!(stats.problems.is_empty(), "{:?}", stats.problems);
    assert!(stats.folders.iter().all(|f| f.reconciles));

    let class = |source: &str, name: &str| {
        let i = CHEXPERT_CLASSES.iter().position(|c| c.1 == name).unwrap();
        stats.labels[source][i].clone()
    };
    let effusion = class("mimic", "pleural_effusion");
    assert_eq!(
        (
            effusion.positive,
            effusion.negative,
            effusion.uncertain,
            effusion.blank
        ),
        (1, 0, 1, 1)
    );
    let pneumothorax = class("mimic", "pneumothorax");
    assert_eq!((pneumothorax.negative, pneumothorax.blank), (1, 2));
    assert_eq!(class("padchest", "no_finding").blank, 2);

    assert_eq!(stats.finding_labels.labels, 3);
    assert_eq!(stats.finding_labels.rows_with_labels, 2);

    let text = &stats.text;
    assert_eq!(text.reports, 3);
    assert_eq!(
        (text.chars.min, text.chars.max),
        (8, TEXT_1.chars().count() as i64)
    );
    assert_eq!(
        (text.tokens.min, text.tokens.median, text.tokens.max),
        (6, 12, 77)
    );
    assert_eq!((text.truncated, text.at_context), (1, 1));
    assert_eq!(text.chars_histogram.counts.iter().sum::<u64>(), 3);

    let e = &stats.entities;
    assert_eq!((e.spans, e.invalid_spans), (3, 0));
    assert_eq!(e.per_report_counts, vec![1, 1, 1]);
    assert_eq!(
        e.top[0],
        Frequency {
            value: "effusion".into(),
            count: 2
        }
    );
    assert_eq!(e.top[1].value, "pneumothorax");
    assert_eq!((e.by_source["sidecar"], e.by_source["lexicon"]), (1, 2));

    let im = &stats.images;
    assert_eq!((im.stored_height.min, im.stored_height.max), (2, 3));
    assert_eq!(im.orig_cols.max, 40);
    let (mimic_px, padchest_px) = (12 + 12 + 4, 6 + 9);
    assert_eq!(im.intensity["mimic"].iter().sum::<u64>(), mimic_px);
    assert_eq!(im.intensity["padchest"].iter().sum::<u64>(), padchest_px);
    assert_eq!(
        (
            im.intensity["mimic"][10],
            im.intensity["mimic"][200],
            im.intensity["mimic"][0]
        ),
        (12, 12, 4)
    );
    assert_eq!(im.intensity["padchest"][255], 9);
    assert_eq!(
        (im.pixels, im.decoded, im.undecodable),
        (mimic_px + padchest_px, 5, 0)
    );

    assert_eq!(stats.rejects.records, 2);
    assert_eq!(stats.rejects.by_stage[&Stage::ImageDecode], 2);
    assert_eq!(
        stats.rejects.reasons.len(),
        1,
        "both reasons fall in one group"
    );
    assert_eq!(stats.rejects.reasons[0].reason, "pixel data truncated");

    let json = std::fs::read_to_string(tmp.path().join("out").join(STATS_JSON)).unwrap();
    assert_eq!(serde_json::from_str::<Stats>(&json).unwrap(), stats);
}

#[test]
fn markdown_embeds_every_chart_and_charts_are_pngs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let stats = write_report(&fixture(tmp.path()), &out).unwrap();
    let md = std::fs::read_to_string(out.join(STATS_MD)).unwrap();

    let mut pngs: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".png"))
        .collect();
    pngs.sort();
    let mut listed = stats.charts.clone();
    listed.sort();
    assert_eq!(pngs, listed);
    for name in [
        charts::label_chart("mimic"),
        charts::INTENSITY.into(),
        charts::REPORT_TOKENS.into(),
    ] {
        assert!(pngs.contains(&name), "{name} not drawn");
    }
    for name in &pngs {
        assert!(
            md.contains(&format!("![]({name})")),
            "stats.md does not show {name}"
        );
        let png = image::open(out.join(name)).unwrap();
        assert!(
            png.width() >= 800 && png.height() >= 150,
            "{name}: {}×{}",
            png.width(),
            png.height()
        );
    }
    let intensity = image::open(out.join(charts::INTENSITY)).unwrap();
    assert_eq!((intensity.width(), intensity.height()), (900, 480));
    assert!(md.contains("All checks pass"));
    assert!(!md.contains("FAILED"));
}

#[test]
fn counts_that_do_not_reconcile_are_reported_loudly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mimic");
    // 3 written + 1 rejected ≠ 9 seen, and the log holds no reject.
    write_folder(
        &dir,
        Source::Mimic,
        ImageEncoding::Raw,
        &mimic_rows(),
        counts(9, 3, 0, &[(Stage::Report, 1)]),
        &[],
    );
    let out = tmp.path().join("out");
    let stats = write_report(&[dir], &out).unwrap();
    assert!(!stats.folders[0].reconciles);
    assert!(
        stats.problems.iter().any(|p| p.contains("seen 9")),
        "{:?}",
        stats.problems
    );
    assert!(
        stats
            .problems
            .iter()
            .any(|p| p.contains("`report` rejects logged")),
        "{:?}",
        stats.problems
    );
    let md = std::fs::read_to_string(out.join(STATS_MD)).unwrap();
    assert!(md.contains("check(s) FAILED"), "{md}");
}

#[test]
fn missing_shard_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = fixture(tmp.path());
    let shard = dirs[1].join(schemas::shard_file_name(0));
    std::fs::remove_file(&shard).unwrap();
    let err = write_report(&dirs, &tmp.path().join("out")).unwrap_err();
    assert!(
        matches!(&err, StatsError::MissingShard { path, .. } if *path == shard),
        "{err}"
    );
    assert!(err.to_string().contains("shard-00000.parquet"), "{err}");
}

#[test]
fn a_changed_shard_is_an_error_naming_it_unless_verification_is_off() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = fixture(tmp.path());
    // Another valid shard in place of the listed one: readable, but not the
    // bytes the manifest lists.
    let shard = dirs[0].join(schemas::shard_file_name(0));
    let mut rows = mimic_rows();
    rows.pop();
    write_shard(&shard, &rows, ImageEncoding::Raw);
    let err = write_report(&dirs, &tmp.path().join("out")).unwrap_err();
    assert!(
        matches!(&err, StatsError::Checksum { path, .. } if *path == shard),
        "{err}"
    );
    assert!(
        err.to_string().contains("shard-00000.parquet") && err.to_string().contains("sha256"),
        "{err}"
    );
    let opts = ReportOptions {
        verify_checksums: false,
    };
    let stats = write_report_with(&dirs, &tmp.path().join("out"), &opts).unwrap();
    assert_eq!(stats.rows, 4);
}

#[test]
fn folder_without_manifest_is_an_error_naming_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let err = write_report(&[tmp.path().to_path_buf()], &tmp.path().join("out")).unwrap_err();
    assert!(
        matches!(&err, StatsError::MissingManifest { dir } if dir == tmp.path()),
        "{err}"
    );
    assert!(err.to_string().contains("manifest.json"), "{err}");
}

#[test]
fn reject_reasons_group_before_the_colon_with_digits_hidden() {
    use super::collect::reason_group;
    assert_eq!(
        reason_group("expected 512 pixels, found 3: x"),
        "expected # pixels, found #"
    );
    assert_eq!(reason_group("no report file"), "no report file");
    let long = "a".repeat(100);
    assert_eq!(reason_group(&long).chars().count(), 61);
}
