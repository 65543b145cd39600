//! A shard folder is bound to the inputs it was made from: running `ingest`
//! again on a finished folder whose inputs or arguments changed stops and
//! says what changed, the same arguments spelled differently are the same
//! run, leftovers of a killed run are cleaned up, and `ingest stats` checks
//! each shard against its manifest.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::*;

/// A small synthetic world and one finished ingest of it; returns
/// (temporary folder, MIMIC root, output folder).
fn finished(extra: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let world_dir = tmp.path().join("world");
    world(&world_dir, &["--studies", "5", "--padchest-images", "2"]);
    let root = world_dir.join("mimic-cxr");
    let out = tmp.path().join("out");
    let mut args = vec!["--short-side", "64", "--threads", "1"];
    args.extend_from_slice(extra);
    let res = ingest_mimic(&root, &out, &args);
    assert!(res.status.success(), "{}", stderr(&res));
    (tmp, root, out)
}

fn stderr(res: &Output) -> String {
    String::from_utf8_lossy(&res.stderr).into_owned()
}

/// The release folder of a written row: `files/pXX/pSUBJECT/sSTUDY`.
fn study_dir(root: &Path, row: &ingest::shard::Row) -> PathBuf {
    root.join("files")
        .join(format!("p{}", &row.subject_id[..2]))
        .join(format!("p{}", row.subject_id))
        .join(format!("s{}", row.study_id))
}

#[test]
fn a_changed_report_in_a_finished_folder_is_refused_naming_it() {
    let (_tmp, root, out) = finished(&[]);
    let row = &rows(&out)[0];
    let dir = study_dir(&root, row);
    let report = dir.with_file_name(format!("s{}.txt", row.study_id));
    let mut text = std::fs::read_to_string(&report).unwrap();
    text.push_str("\nIMPRESSION: changed after the run.\n");
    std::fs::write(&report, text).unwrap();

    let res = ingest_mimic(&root, &out, &["--short-side", "64", "--threads", "1"]);
    let err = stderr(&res);
    assert!(!res.status.success(), "a stale folder was accepted: {err}");
    assert!(
        err.contains("1 modified") && err.contains(&report.display().to_string()),
        "{err}"
    );
}

#[test]
fn deleted_dicoms_in_a_finished_folder_are_refused_naming_the_listing_change() {
    let (_tmp, root, out) = finished(&[]);
    let written = rows(&out);
    assert!(written.len() >= 3, "{} rows", written.len());
    let deleted: Vec<PathBuf> = written[..3]
        .iter()
        .map(|r| study_dir(&root, r).join(format!("{}.dcm", r.image_id)))
        .collect();
    for p in &deleted {
        std::fs::remove_file(p).unwrap();
    }

    let res = ingest_mimic(&root, &out, &["--short-side", "64", "--threads", "1"]);
    let err = stderr(&res);
    assert!(!res.status.success(), "a stale folder was accepted: {err}");
    assert!(
        err.contains("input listing changed: 0 files added, 3 removed")
            && deleted
                .iter()
                .any(|p| err.contains(&p.display().to_string())),
        "{err}"
    );
}

#[test]
fn relative_dot_and_absolute_roots_are_the_same_argument() {
    let tmp = tempfile::tempdir().unwrap();
    world(
        &tmp.path().join("world"),
        &["--studies", "3", "--padchest-images", "2"],
    );
    let tok = tokenizer();
    let absolute = tmp.path().join("world/mimic-cxr");
    let ingest_from_tmp = |root: &str, out: &str| {
        Command::new(bin("ingest"))
            .current_dir(tmp.path())
            .env("RUST_LOG", "warn")
            .args(["mimic", "--root", root, "--out", out, "--tokenizer"])
            .arg(&tok)
            .args(["--short-side", "64", "--threads", "1"])
            .output()
            .unwrap()
    };
    let res = ingest_from_tmp("world/mimic-cxr", "out");
    assert!(res.status.success(), "{}", stderr(&res));
    let before = folder_bytes(&tmp.path().join("out"));
    for (root, out) in [
        ("./world/mimic-cxr", "./out"),
        ("world/./mimic-cxr/", "out/"),
        (absolute.to_str().unwrap(), "out"),
    ] {
        let res = ingest_from_tmp(root, out);
        assert!(
            res.status.success(),
            "--root {root} refused: {}",
            stderr(&res)
        );
        assert_eq!(folder_bytes(&tmp.path().join("out")), before, "{root}");
    }
}

#[test]
fn a_different_argument_is_named_with_both_values() {
    let (_tmp, root, out) = finished(&[]);
    let res = ingest_mimic(&root, &out, &["--short-side", "96", "--threads", "1"]);
    let err = stderr(&res);
    assert!(!res.status.success(), "{err}");
    assert!(
        err.contains("argument `image.short_side` was 64, now 96"),
        "{err}"
    );
    // Only what differs is named.
    assert!(!err.contains("`root`"), "{err}");
}

#[test]
fn stale_progress_and_temporary_shards_are_cleaned_by_the_next_run() {
    let (_tmp, root, out) = finished(&[]);
    let before = folder_bytes(&out);
    // A kill between the manifest and the clean-up leaves the progress
    // folder; a full disk leaves a temporary shard.
    std::fs::create_dir_all(out.join(".progress")).unwrap();
    std::fs::write(out.join(".progress/group-00000.json"), b"{}").unwrap();
    std::fs::write(out.join("shard-00000.parquet.tmp"), b"half a shard").unwrap();

    let res = ingest_mimic(&root, &out, &["--short-side", "64", "--threads", "1"]);
    assert!(res.status.success(), "{}", stderr(&res));
    assert!(!out.join(".progress").exists(), "stale .progress kept");
    assert!(
        !out.join("shard-00000.parquet.tmp").exists(),
        "stale .tmp kept"
    );
    assert_eq!(folder_bytes(&out), before);
}

#[test]
fn an_out_that_is_a_file_is_one_error_line_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    world(
        &tmp.path().join("world"),
        &["--studies", "2", "--padchest-images", "2"],
    );
    let out = tmp.path().join("not-a-folder");
    std::fs::write(&out, b"").unwrap();
    let res = ingest_mimic(&tmp.path().join("world/mimic-cxr"), &out, &[]);
    let err = stderr(&res);
    assert!(!res.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("--out") && lines[0].contains(&out.display().to_string()),
        "{err}"
    );
    assert!(err.matches("os error").count() <= 1, "{err}");
}

#[test]
fn stats_refuses_a_changed_shard_unless_told_not_to_verify() {
    let (tmp, _root, out) = finished(&[]);
    // Another valid shard in place of the listed one, one image byte flipped:
    // readable, so only the checksum can tell.
    let shard = out.join(schemas::shard_file_name(0));
    let mut rows = ingest::shard::read_shard(&shard).unwrap();
    rows[0].image[0] ^= 0xff;
    let bytes =
        ingest::shard::encode_shard(&rows, &ingest::shard::ShardOptions::default()).unwrap();
    std::fs::write(&shard, bytes).unwrap();

    let report = tmp.path().join("stats");
    let (out_s, report_s) = (out.to_str().unwrap(), report.to_str().unwrap());
    let res = run("ingest", &["stats", "--shards", out_s, "--out", report_s]);
    let err = stderr(&res);
    assert!(!res.status.success(), "a changed shard was read: {err}");
    assert!(
        err.contains(&shard.display().to_string()) && err.contains("sha256"),
        "{err}"
    );
    run_ok(
        "ingest",
        &["stats", "--shards", out_s, "--out", report_s, "--no-verify"],
    );
}
