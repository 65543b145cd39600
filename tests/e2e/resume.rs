//! A run killed at any moment and started again ends with the same shards as
//! an uninterrupted run; a half-written shard is never visible.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

fn ingest_args<'a>(root: &'a str, out: &'a str, tok: &'a str) -> Vec<&'a str> {
    vec![
        "mimic",
        "--root",
        root,
        "--out",
        out,
        "--tokenizer",
        tok,
        "--rows-per-shard",
        "3",
        "--short-side",
        "96",
        "--threads",
        "1",
    ]
}

/// Every file named like a shard is a complete Parquet file.
fn visible_shards_are_whole(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "parquet") {
            ingest::shard::read_shard(&p)
                .unwrap_or_else(|e| panic!("half-written shard visible: {e}"));
            n += 1;
        }
    }
    n
}

#[test]
fn killed_run_resumes_to_identical_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let world_dir = tmp.path().join("world");
    world(&world_dir, &["--studies", "24", "--padchest-images", "4"]);
    let root = world_dir.join("mimic-cxr");
    let tok = tokenizer();
    let (root_s, tok_s) = (root.to_str().unwrap(), tok.to_str().unwrap());

    let whole = tmp.path().join("whole");
    run_ok(
        "ingest",
        &ingest_args(root_s, whole.to_str().unwrap(), tok_s),
    );

    // Kill at several moments: after the first, second and fourth finished shard.
    for kill_after in [1usize, 2, 4] {
        let out = tmp.path().join(format!("killed{kill_after}"));
        let out_s = out.to_str().unwrap();
        let mut child = Command::new(bin("ingest"))
            .args(ingest_args(root_s, out_s, tok_s))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            let done = std::fs::read_dir(out.join(".progress"))
                .map(|d| d.count().saturating_sub(1))
                .unwrap_or(0);
            if done >= kill_after || start.elapsed() > Duration::from_secs(120) {
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().ok();
        child.wait().unwrap();
        visible_shards_are_whole(&out);
        assert!(
            !out.join("manifest.json").exists() || kill_after > 4,
            "killed run must not look finished"
        );

        run_ok("ingest", &ingest_args(root_s, out_s, tok_s));
        let (a, b) = (folder_bytes(&whole), folder_bytes(&out));
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "kill after {kill_after}"
        );
        for (name, bytes) in &a {
            if name == "manifest.json" {
                // Its arguments hold the output-independent options only, so it too must match.
                assert_eq!(
                    String::from_utf8_lossy(bytes),
                    String::from_utf8_lossy(&b[name])
                );
            }
            assert!(
                bytes == &b[name],
                "{name} differs after resume (kill after {kill_after})"
            );
        }
        assert!(
            !out.join(".progress").exists(),
            "progress folder removed at the end"
        );
    }
}

#[test]
fn a_finished_folder_is_not_mixed_with_another_run() {
    let tmp = tempfile::tempdir().unwrap();
    let world_dir = tmp.path().join("world");
    world(&world_dir, &["--studies", "6", "--padchest-images", "2"]);
    let root = world_dir.join("mimic-cxr");
    let out = tmp.path().join("out");
    let res = ingest_mimic(&root, &out, &["--short-side", "64"]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let res = ingest_mimic(&root, &out, &["--short-side", "96"]);
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("manifest.json") && err.contains("different"),
        "{err}"
    );
}
