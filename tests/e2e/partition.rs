//! Ingest as a job array: `ingest … --part I/N` on N "machines", then
//! `ingest merge`, gives the folder a single run writes, byte for byte; merge
//! refuses a missing part, a part given twice, and parts made with other
//! arguments, naming the folder and the argument.

use std::path::{Path, PathBuf};

use crate::util::*;

/// Runs `ingest <args> --out <out> [--part I/N]`, failing the test on error.
fn ingest(args: &[&str], out: &Path, part: Option<String>) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--out", out.to_str().unwrap()]);
    if let Some(p) = &part {
        all.extend(["--part", p.as_str()]);
    }
    run_ok("ingest", &all);
}

/// The N part folders of a run of `args`.
fn parts(tmp: &Path, name: &str, args: &[&str], count: u32) -> Vec<PathBuf> {
    (1..=count)
        .map(|i| {
            let dir = tmp.join(format!("{name}-part{i}of{count}"));
            ingest(args, &dir, Some(format!("{i}/{count}")));
            dir
        })
        .collect()
}

fn merge(parts: &[PathBuf], out: &Path) -> std::process::Output {
    let mut args = vec!["merge", "--out", out.to_str().unwrap(), "--parts"];
    args.extend(parts.iter().map(|p| p.to_str().unwrap()));
    run("ingest", &args)
}

/// Parts over 1, 2 and 3 machines merge into the single run's folder.
fn parts_merge_to_the_single_run(tmp: &Path, name: &str, args: &[&str]) {
    let whole = tmp.join(format!("{name}-whole"));
    ingest(args, &whole, None);
    let m = manifest(&whole);
    assert!(m.part.is_none());
    let whole_rows = rows(&whole);
    assert!(m.shards.len() >= 4, "{name}: want several shards to share");
    for count in 1..=3u32 {
        let dirs = parts(tmp, name, args, count);
        // Each part holds a share only, and together they hold every shard.
        let mut shards_of_parts = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            let p = manifest(d);
            let info = p.part.clone().expect("a part's manifest records its part");
            assert_eq!((info.index, info.count), (i as u32 + 1, count));
            if count > 1 {
                assert!(p.shards.len() < m.shards.len(), "{name} {count}");
            }
            shards_of_parts.extend(p.shards);
        }
        assert_eq!(shards_of_parts, m.shards, "{name}: {count} parts");

        let out = tmp.join(format!("{name}-merged{count}"));
        let o = merge(&dirs, &out);
        assert!(
            o.status.success(),
            "{name}: merge of {count} parts failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let merged = manifest(&out);
        assert_eq!(merged.counts, m.counts, "{name}: {count} parts");
        assert_eq!(merged, m, "{name}: {count} parts");
        assert_eq!(rows(&out), whole_rows, "{name}: {count} parts");
        assert_eq!(rejects(&out), rejects(&whole), "{name}: {count} parts");
        // Shards, manifest, reject log and fingerprint: byte for byte.
        assert_eq!(
            folder_bytes(&out),
            folder_bytes(&whole),
            "{name}: {count} parts"
        );
        // The merged folder is a finished whole run to `ingest` itself.
        ingest(args, &out, None);
        assert_eq!(folder_bytes(&out), folder_bytes(&whole));
    }
}

#[test]
fn mimic_parts_merge_to_the_single_run_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let world_dir = tmp.path().join("world");
    world(
        &world_dir,
        &["--studies", "20", "--padchest-images", "4", "--faults"],
    );
    let (root, tok) = (world_dir.join("mimic-cxr"), tokenizer());
    let args = [
        "mimic",
        "--root",
        root.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--rows-per-shard",
        "4",
        "--short-side",
        "64",
        "--threads",
        "1",
    ];
    parts_merge_to_the_single_run(tmp.path(), "mimic", &args);
    assert!(
        !rejects(&tmp.path().join("mimic-whole")).is_empty(),
        "the faults make rejects, which part 1 and the others must share out"
    );
}

#[test]
fn padchest_parts_merge_to_the_single_run_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let world_dir = tmp.path().join("world");
    world(&world_dir, &["--studies", "2", "--padchest-images", "30"]);
    let root = world_dir.join("padchest");
    let args = [
        "padchest",
        "--images-only",
        "--root",
        root.to_str().unwrap(),
        "--rows-per-shard",
        "5",
        "--short-side",
        "64",
        "--threads",
        "1",
    ];
    parts_merge_to_the_single_run(tmp.path(), "padchest", &args);
}

#[test]
fn merge_refuses_missing_duplicate_and_mismatched_parts() {
    let tmp = tempfile::tempdir().unwrap();
    let world_dir = tmp.path().join("world");
    world(&world_dir, &["--studies", "8", "--padchest-images", "4"]);
    let (root, tok) = (world_dir.join("mimic-cxr"), tokenizer());
    let args = |short_side: &'static str| {
        vec![
            "mimic".to_string(),
            "--root".into(),
            root.display().to_string(),
            "--tokenizer".into(),
            tok.display().to_string(),
            "--rows-per-shard".into(),
            "3".into(),
            "--short-side".into(),
            short_side.into(),
            "--threads".into(),
            "1".into(),
        ]
    };
    let a64 = args("64");
    let a64: Vec<&str> = a64.iter().map(String::as_str).collect();
    let a80 = args("80");
    let a80: Vec<&str> = a80.iter().map(String::as_str).collect();
    let dirs = parts(tmp.path(), "mimic", &a64, 3);
    let out = tmp.path().join("merged");
    let stderr = |o: std::process::Output| {
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };

    let missing = stderr(merge(&[dirs[0].clone(), dirs[2].clone()], &out));
    assert!(missing.contains("parts missing: 2 of 3"), "{missing}");

    let again = tmp.path().join("again-part2of3");
    ingest(&a64, &again, Some("2/3".into()));
    let twice = stderr(merge(
        &[
            dirs[0].clone(),
            dirs[1].clone(),
            again.clone(),
            dirs[2].clone(),
        ],
        &out,
    ));
    assert!(
        twice.contains("part 2/3 given twice")
            && twice.contains(dirs[1].to_str().unwrap())
            && twice.contains(again.to_str().unwrap()),
        "{twice}"
    );

    let other = tmp.path().join("other-part3of3");
    ingest(&a80, &other, Some("3/3".into()));
    let mismatch = stderr(merge(
        &[dirs[0].clone(), dirs[1].clone(), other.clone()],
        &out,
    ));
    assert!(
        mismatch.contains("argument `image.short_side` was 64, now 80")
            && mismatch.contains(other.to_str().unwrap()),
        "{mismatch}"
    );
    assert!(!out.exists(), "a refused merge writes nothing");

    // A part folder run again as another part is refused, naming the change.
    let mut a = a64.clone();
    a.extend(["--out", dirs[0].to_str().unwrap(), "--part", "2/3"]);
    let rerun = stderr(run("ingest", &a));
    assert!(
        rerun.contains("--part: was part 1/3, now part 2/3"),
        "{rerun}"
    );

    let bad = stderr(run(
        "ingest",
        &[&a64[..], &["--out", "x", "--part", "4/3"]].concat(),
    ));
    assert!(bad.contains("4/3"), "{bad}");
}
