//! Damaged inputs never give wrong rows with exit 0: a label or metadata CSV
//! that ends early stops the run naming the file (or, when allowed, rejects
//! what it no longer covers), a label value that does not parse rejects its
//! study's images with the CSV's file and line, an image of absurd size is a
//! reject instead of an abort, and invalid UTF-8 in a report is logged.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::Path;

use schemas::Stage;

use crate::util::*;

const CHEXPERT: &str = "mimic-cxr-2.0.0-chexpert.csv.gz";
const METADATA: &str = "mimic-cxr-2.0.0-metadata.csv.gz";
const SPLIT: &str = "mimic-cxr-2.0.0-split.csv.gz";
const PADCHEST: &str = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz";

fn gz_text(path: &Path) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text
}

fn write_gz(path: &Path, text: &str, level: flate2::Compression) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), level);
    gz.write_all(text.as_bytes()).unwrap();
    let bytes = gz.finish().unwrap();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

/// Rewrites a gzipped CSV uncompressed inside its gzip (stored blocks), then
/// cuts it at `keep` of its text: the first rows stay readable, the rest is
/// lost with the gzip trailer, as a copy interrupted part-way leaves it.
fn truncate_gz(path: &Path, keep: f64) {
    let text = gz_text(path);
    let bytes = write_gz(path, &text, flate2::Compression::none());
    // 10 bytes of gzip header and 5 of stored-block header before the text.
    let cut = 15 + (text.len() as f64 * keep) as usize;
    assert!(cut < bytes.len() - 8);
    std::fs::write(path, &bytes[..cut]).unwrap();
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn small_world(dir: &Path) {
    world(dir, &["--studies", "8", "--padchest-images", "6"]);
}

#[test]
fn a_truncated_label_csv_stops_the_run_naming_the_file_or_rejects_what_it_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let world_dir = tmp.path().join("world");
    small_world(&world_dir);
    let root = world_dir.join("mimic-cxr");
    let labels_before: HashSet<(String, String)> = read_csv_gz(&root.join(CHEXPERT))
        .into_iter()
        .map(|r| (r["subject_id"].clone(), r["study_id"].clone()))
        .collect();
    truncate_gz(&root.join(CHEXPERT), 0.5);

    let res = ingest_mimic(&root, &tmp.path().join("out"), &["--short-side", "64"]);
    assert!(!res.status.success(), "a truncated label CSV must fail");
    let err = stderr(&res);
    assert!(
        err.contains(CHEXPERT) && err.contains("ends early"),
        "{err}"
    );

    // Allowed: every image whose study the file no longer reaches is a reject
    // naming the file; no row is written with labels it does not have.
    let out = tmp.path().join("allowed");
    let res = ingest_mimic(
        &root,
        &out,
        &[
            "--short-side",
            "64",
            "--views",
            "all",
            "--allow-truncated-csv",
        ],
    );
    assert!(res.status.success(), "{}", stderr(&res));
    let m = manifest(&out);
    assert!(m.counts.reconciles(), "{:?}", m.counts);
    let rejects = rejects(&out);
    assert!(!rejects.is_empty());
    assert_eq!(m.counts.rejected_total() as usize, rejects.len());
    for r in &rejects {
        assert_eq!(r.stage, Stage::Csv, "{r:?}");
        assert!(
            r.path.contains(CHEXPERT) && r.reason.contains("ends early"),
            "{r:?}"
        );
    }
    let rows = rows(&out);
    assert!(!rows.is_empty(), "the rows before the break are written");
    for row in &rows {
        assert!(labels_before.contains(&(row.subject_id.clone(), row.study_id.clone())));
        assert!(
            row.labels.iter().any(Option::is_some),
            "{}: written with blank labels",
            row.image_id
        );
    }
}

#[test]
fn a_label_value_that_does_not_parse_rejects_its_images_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let world_dir = tmp.path().join("world");
    small_world(&world_dir);
    let root = world_dir.join("mimic-cxr");
    let text = gz_text(&root.join(CHEXPERT));
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // Line 3 of the file: the second study. Its first empty or numeric label
    // cell (third column on) becomes a word.
    let mut cells: Vec<String> = lines[2].split(',').map(str::to_string).collect();
    let (subject, study) = (cells[0].clone(), cells[1].clone());
    cells[2] = "yes".into();
    lines[2] = cells.join(",");
    write_gz(
        &root.join(CHEXPERT),
        &(lines.join("\n") + "\n"),
        flate2::Compression::default(),
    );
    let images_of_study = read_csv_gz(&root.join(METADATA))
        .iter()
        .filter(|r| r["subject_id"] == subject && r["study_id"] == study)
        .count();
    assert!(images_of_study > 0);

    let out = tmp.path().join("out");
    let res = ingest_mimic(&root, &out, &["--short-side", "64", "--views", "all"]);
    assert!(res.status.success(), "{}", stderr(&res));
    let m = manifest(&out);
    assert!(m.counts.reconciles(), "{:?}", m.counts);
    let rejects = rejects(&out);
    assert_eq!(rejects.len(), images_of_study, "{rejects:#?}");
    for r in &rejects {
        assert_eq!(r.stage, Stage::Csv);
        assert!(r.path.ends_with(&format!("{CHEXPERT}:3")), "{r:?}");
        assert!(r.reason.contains("\"yes\""), "{r:?}");
        assert_eq!(r.study_id.as_deref(), Some(study.as_str()));
    }
    assert_eq!(
        m.counts.rejected.get(&Stage::Csv),
        Some(&(images_of_study as u64))
    );
    let rows = rows(&out);
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r.study_id != study));

    let strict = ingest_mimic(
        &root,
        &tmp.path().join("strict"),
        &["--short-side", "64", "--strict"],
    );
    assert!(!strict.status.success());
    let err = stderr(&strict);
    assert!(
        err.contains("strict mode") && err.contains(CHEXPERT),
        "{err}"
    );
}

#[test]
fn a_truncated_metadata_csv_fails_or_accounts_for_every_image_of_the_split_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let world_dir = tmp.path().join("world");
    small_world(&world_dir);
    let root = world_dir.join("mimic-cxr");
    let all_images = read_csv_gz(&root.join(SPLIT)).len();
    truncate_gz(&root.join(METADATA), 0.5);

    let res = ingest_mimic(&root, &tmp.path().join("out"), &["--short-side", "64"]);
    assert!(!res.status.success(), "a truncated metadata CSV must fail");
    let err = stderr(&res);
    assert!(
        err.contains(METADATA) && err.contains("ends early"),
        "{err}"
    );

    let out = tmp.path().join("allowed");
    let res = ingest_mimic(
        &root,
        &out,
        &[
            "--short-side",
            "64",
            "--views",
            "all",
            "--allow-truncated-csv",
        ],
    );
    assert!(res.status.success(), "{}", stderr(&res));
    let m = manifest(&out);
    assert!(m.counts.reconciles(), "{:?}", m.counts);
    assert_eq!(m.counts.seen as usize, all_images, "{:?}", m.counts);
    let lost: Vec<_> = rejects(&out)
        .into_iter()
        .filter(|r| r.reason.contains("not reached"))
        .collect();
    assert!(!lost.is_empty());
    assert!(
        lost.iter()
            .all(|r| r.path.contains(METADATA) && r.image_id.is_some())
    );
    assert_eq!(m.counts.written as usize + lost.len(), all_images);

    let strict = ingest_mimic(
        &root,
        &tmp.path().join("strict"),
        &["--short-side", "64", "--allow-truncated-csv", "--strict"],
    );
    assert!(!strict.status.success(), "--strict stops at the lost rows");
}

/// A valid 16-bit grayscale PNG of `width` × `height`, all one value.
fn write_png(path: &Path, width: u32, height: u32) {
    let img = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_pixel(
        width,
        height,
        image::Luma([1000]),
    );
    img.save_with_format(path, image::ImageFormat::Png).unwrap();
}

#[test]
fn images_of_absurd_size_are_rejects_and_the_run_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let world_dir = tmp.path().join("world");
    small_world(&world_dir);
    let root = world_dir.join("padchest");
    let csv = read_csv_gz(&root.join(PADCHEST));
    let path_of = |r: &HashMap<String, String>| root.join(&r["ImageDir"]).join(&r["ImageID"]);
    let id = |i: usize| csv[i]["ImageID"].trim_end_matches(".png").to_string();
    let (strip, dot, long, big) = (id(0), id(1), id(2), id(3));
    // The strip that a resize keeping the aspect ratio would make 256 x 8,388,480.
    write_png(&path_of(&csv[0]), 2, 65535);
    write_png(&path_of(&csv[1]), 1, 1);
    // Wide enough for the minimum side, too long for the maximum aspect ratio.
    write_png(&path_of(&csv[2]), 40, 4000);
    // Square, so within both the side and aspect limits, but above the
    // pixel limit given below (the generated images are about 512 a side).
    write_png(&path_of(&csv[3]), 800, 800);

    let out = tmp.path().join("out");
    run_ok(
        "ingest",
        &[
            "padchest",
            "--images-only",
            "--projections",
            "all",
            "--root",
            root.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--short-side",
            "64",
            "--max-pixels",
            "600000",
        ],
    );
    let m = manifest(&out);
    assert!(m.counts.reconciles(), "{:?}", m.counts);
    let rejects = rejects(&out);
    assert_eq!(rejects.len(), 4, "{rejects:#?}");
    let by_image: HashMap<_, _> = rejects
        .iter()
        .map(|r| (r.image_id.clone().unwrap(), r))
        .collect();
    for (image, size, why) in [
        (&strip, "2x65535", "minimum"),
        (&dot, "1x1", "minimum"),
        (&long, "40x4000", "aspect ratio 100.00"),
        (
            &big,
            "800x800",
            "640000 pixels exceed the maximum of 600000",
        ),
    ] {
        let r = by_image[image];
        assert_eq!(r.stage, Stage::ImageSize, "{r:?}");
        assert!(r.reason.contains(size) && r.reason.contains(why), "{r:?}");
    }
    assert_eq!(m.counts.rejected.get(&Stage::ImageSize), Some(&4));
    assert_eq!(m.counts.written as usize, csv.len() - 4);
    assert_eq!(rows(&out).len(), csv.len() - 4);
    assert_eq!(
        (
            m.image_policy.min_side,
            m.image_policy.max_aspect,
            m.image_policy.max_pixels
        ),
        (32, 4.0, 600_000)
    );
}

#[test]
fn invalid_utf8_in_a_report_is_kept_and_logged_with_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let world_dir = tmp.path().join("world");
    world(&world_dir, &["--studies", "3", "--padchest-images", "2"]);
    let root = world_dir.join("mimic-cxr");
    let meta = read_csv_gz(&root.join(METADATA));
    let (subject, study) = (&meta[0]["subject_id"], &meta[0]["study_id"]);
    let report = root
        .join("files")
        .join(format!("p{}", &subject[..2]))
        .join(format!("p{subject}"))
        .join(format!("s{study}.txt"));
    let mut bytes = std::fs::read(&report).unwrap();
    let offset = bytes.len() / 2;
    bytes.insert(offset, 0xff);
    std::fs::write(&report, &bytes).unwrap();

    let out = tmp.path().join("out");
    let res = ingest_mimic(&root, &out, &["--short-side", "64", "--views", "all"]);
    assert!(res.status.success(), "{}", stderr(&res));
    let err = stderr(&res);
    let report_name = format!("s{study}.txt");
    assert!(
        err.lines().any(|l| l.contains(&report_name)
            && l.contains("invalid UTF-8")
            && l.contains(&format!("byte {offset}"))),
        "{err}"
    );
    let rows = rows(&out);
    let row = rows.iter().find(|r| &r.study_id == study).unwrap();
    assert!(row.report.as_deref().unwrap().contains('\u{FFFD}'));
}
