//! `train` as a data-parallel job on CPU (c10d's Gloo): the test starts the
//! ranks itself with torchrun's variables (`RANK`, `LOCAL_RANK`,
//! `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), no `torchrun` needed.
//!
//! What is pinned: a launch of one process trains byte for byte as a plain
//! start; two ranks finish with the same weights on both (checked by the run
//! itself at every checkpoint) and one set of run files; a rank that dies
//! makes the other fail within the timeout, naming the collective.
//!
//! Not pinned, because it does not hold yet: two ranks' losses equal one
//! process's at the same global batch. Each rank's InfoNCE uses only its own
//! rows as negatives, and the masking draws are keyed by the step, not by
//! the global row, so they depend on the world size.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::train::{TINY, fixture, ok};
use crate::util::bin;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// One rank of `train` on the fixture's shards, in a world of `world`.
fn rank(config: &Path, out: &Path, rank: usize, world: usize, port: u16, timeout_s: u64) -> Child {
    rank_with(config, out, rank, world, port, timeout_s, &[])
}

fn rank_with(
    config: &Path,
    out: &Path,
    rank: usize,
    world: usize,
    port: u16,
    timeout_s: u64,
    extra: &[&str],
) -> Child {
    let f = fixture();
    Command::new(bin("train"))
        .args([
            "--shards",
            f.mimic.to_str().unwrap(),
            "--shards",
            f.padchest.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ])
        .args(extra)
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("MMCLIP_DIST_TIMEOUT_S", timeout_s.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting train")
}

fn metrics_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The fields of a metrics line that do not depend on the clock.
fn losses(run: &Path) -> Vec<String> {
    metrics_lines(run)
        .iter()
        .map(|v| {
            [
                "step",
                "loss",
                "loss_align",
                "loss_mim",
                "loss_mlm",
                "grad_norm",
                "lr",
            ]
            .map(|k| v[k].to_string())
            .join(" ")
        })
        .collect()
}

#[test]
fn a_launch_of_one_process_trains_exactly_as_a_plain_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let plain = dir.path().join("plain");
    ok(crate::train::train(&cfg, &plain, &[]));
    let launched = dir.path().join("launched");
    let out = rank(&cfg, &launched, 0, 1, free_port(), 30)
        .wait_with_output()
        .unwrap();
    ok(out);
    assert_eq!(losses(&plain), losses(&launched));
    let weights = |run: &Path| {
        std::fs::read(run.join("checkpoints/step-00000006/model.safetensors")).unwrap()
    };
    assert_eq!(weights(&plain), weights(&launched));
}

/// The loader position saved with a checkpoint.
fn next_position(run: &Path, step: u64) -> serde_json::Value {
    let state = run.join(format!("checkpoints/step-{step:08}/state.json"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state).unwrap()).unwrap();
    v["next_position"].clone()
}

#[test]
fn two_ranks_end_with_the_same_weights_and_one_set_of_run_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    // A checkpoint at every step: each one compares the ranks' weights.
    std::fs::write(
        &cfg,
        TINY.replace("checkpoint_every = 3", "checkpoint_every = 1"),
    )
    .unwrap();
    let run = dir.path().join("run");
    let port = free_port();
    let ranks: Vec<Child> = (0..2)
        .map(|r| rank_with(&cfg, &run, r, 2, port, 60, &["--stop-after", "4"]))
        .collect();
    for (r, child) in ranks.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "rank {r} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Rank 0 alone logs: one line per step, not one per rank.
    let steps = |run: &Path| -> Vec<u64> {
        metrics_lines(run)
            .iter()
            .map(|v| v["step"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(steps(&run), (1..=4).collect::<Vec<_>>());
    assert!(
        metrics_lines(&run)
            .iter()
            .all(|v| v["loss"].as_f64().is_some_and(f64::is_finite))
    );

    // Resumed on one process, the loader continues at the global batch the
    // two ranks reached: the same position as a run on one process all along.
    ok(crate::train::train(&cfg, &run, &[]));
    assert_eq!(steps(&run), (1..=6).collect::<Vec<_>>());
    let plain = dir.path().join("plain");
    ok(crate::train::train(&cfg, &plain, &[]));
    for step in [5, 6] {
        assert_eq!(next_position(&run, step), next_position(&plain, step));
    }
    let mut kept: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept, ["step-00000005", "step-00000006"]);
}

#[test]
fn a_rank_that_dies_makes_the_other_fail_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("long.toml");
    std::fs::write(
        &cfg,
        TINY.replace("steps = 6", "steps = 100000")
            .replace("checkpoint_every = 3", "checkpoint_every = 100000"),
    )
    .unwrap();
    let run = dir.path().join("run");
    let port = free_port();
    let timeout_s = 20;
    let survivor = rank(&cfg, &run, 0, 2, port, timeout_s);
    let mut victim = rank(&cfg, &run, 1, 2, port, timeout_s);
    // Killed once training is under way (rank 0 has logged a step).
    let start = Instant::now();
    while !run.join("metrics.jsonl").is_file()
        || std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no step was logged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    let killed = Instant::now();
    let out = survivor.wait_with_output().unwrap();
    let elapsed = killed.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rank 0 went on alone:\n{err}");
    assert!(
        elapsed < Duration::from_secs(timeout_s + 10),
        "rank 0 took {elapsed:?} to stop"
    );
    assert!(
        err.contains("rank 0 of 2") && err.contains("failed"),
        "rank 0's error names neither itself nor the collective:\n{err}"
    );
}
