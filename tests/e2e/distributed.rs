//! `train` as a data-parallel job on CPU (c10d's Gloo): the test starts the
//! ranks itself with torchrun's variables (`RANK`, `LOCAL_RANK`,
//! `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), no `torchrun` needed.
//!
//! What is pinned: a launch of one process trains byte for byte as a plain
//! start; two and three ranks train as one process at the same global batch
//! (the losses of each step and the weights after three steps agree within
//! 1e-5: the ranks' matrix products are smaller, so the last bits differ);
//! two ranks finish with the same weights on both (checked by the run itself
//! at every checkpoint) and one set of run files; a run resumed on another
//! number of processes (two then one, one then two) continues at the global
//! loader position; a rank that dies makes the other fail within the
//! timeout, naming the collective.

use std::collections::BTreeMap;
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
        // 50 kB gradient buckets: the tiny model's gradients travel in
        // many, most started during the backward pass.
        .env("MMCLIP_DIST_BUCKET_MB", "0.05")
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

/// The other direction of a world-size change: a run started on one
/// process continues on two ranks at the global batch it reached, so the
/// loader positions of its later checkpoints are those of a run on one
/// process all along.
#[test]
fn a_run_of_one_process_resumes_on_two_ranks_at_its_global_position() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(
        &cfg,
        TINY.replace("checkpoint_every = 3", "checkpoint_every = 1"),
    )
    .unwrap();
    let run = dir.path().join("run");
    ok(crate::train::train(&cfg, &run, &["--stop-after", "3"]));
    train_as(&cfg, &run, 2);
    let steps: Vec<u64> = metrics_lines(&run)
        .iter()
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=6).collect::<Vec<_>>());
    let plain = dir.path().join("plain");
    ok(crate::train::train(&cfg, &plain, &[]));
    for step in [5, 6] {
        assert_eq!(
            next_position(&run, step),
            next_position(&plain, step),
            "step {step}"
        );
    }
}

/// Every tensor of a checkpoint's `model.safetensors`, by name, as f32s
/// (the format: an 8-byte little-endian header length, a JSON header of
/// dtype, shape and byte offsets, then the data).
fn checkpoint_weights(run: &Path, step: u64) -> BTreeMap<String, Vec<f32>> {
    let path = run.join(format!("checkpoints/step-{step:08}/model.safetensors"));
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    header
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, v)| {
            assert_eq!(v["dtype"], "F32", "{}: {name} is not f32", path.display());
            let [a, b] = [0, 1].map(|i| v["data_offsets"][i].as_u64().unwrap() as usize);
            let values = data[a..b]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (name, values)
        })
        .collect()
}

/// Trains `config` as `world` ranks into `run`, each rank's output checked.
fn train_as(config: &Path, run: &Path, world: usize) {
    let port = free_port();
    let ranks: Vec<Child> = (0..world)
        .map(|r| rank(config, run, r, world, port, 120))
        .collect();
    for (r, child) in ranks.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "rank {r} of {world} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn two_and_three_ranks_train_as_one_process_at_the_same_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    // Three steps, the last two joint (Loss_align), a checkpoint at step 3.
    // SGD (the paper's optimiser) at a rate large enough that a wrong
    // gradient moves the weights well past 1e-5: AdamW would turn the
    // rounding noise of gradients that are zero in exact arithmetic (the
    // attention's key bias) into full steps of lr.
    // At the default paired fraction 0.75, batch 8 (6 paired + 2 unpaired
    // rows) splits over 2 ranks and batch 12 (9 + 3) over 3.
    let config = |batch: usize| {
        let path = dir.path().join(format!("batch-{batch}.toml"));
        let text = TINY
            .replace("kind = \"adamw\"\nlr = 1e-3", "kind = \"sgd\"\nlr = 0.1")
            .replace("steps = 6", "steps = 3")
            .replace("warmup_steps = 2", "warmup_steps = 1")
            .replace("batch_size = 8", &format!("batch_size = {batch}"));
        std::fs::write(&path, text).unwrap();
        path
    };
    for (batch, world) in [(8, 2), (12, 3)] {
        let cfg = config(batch);
        let one = dir.path().join(format!("batch-{batch}-one"));
        ok(crate::train::train(&cfg, &one, &[]));
        let many = dir.path().join(format!("batch-{batch}-ranks-{world}"));
        train_as(&cfg, &many, world);

        let (a, b) = (metrics_lines(&one), metrics_lines(&many));
        assert_eq!(a.len(), 3);
        assert_eq!(b.len(), 3);
        // Every difference is printed before any is judged.
        let mut diffs = Vec::new();
        for (x, y) in a.iter().zip(&b) {
            for key in ["loss", "loss_align", "loss_mim", "loss_mlm"] {
                match (x[key].as_f64(), y[key].as_f64()) {
                    (Some(u), Some(v)) => diffs.push((x["step"].clone(), key, u, v)),
                    (u, v) => assert_eq!(u, v, "{key} at step {} (one vs {world})", x["step"]),
                }
            }
        }
        for (step, key, u, v) in &diffs {
            eprintln!(
                "{world} ranks, step {step}: {key} {v} vs {u} on one process ({:e})",
                (u - v).abs()
            );
        }
        let worst = diffs
            .iter()
            .map(|(_, _, u, v)| (u - v).abs())
            .fold(0.0, f64::max);
        // Loss_align took part: the last two steps are joint.
        assert!(a[2]["loss_align"].as_f64().is_some());

        let (wa, wb) = (checkpoint_weights(&one, 3), checkpoint_weights(&many, 3));
        assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
        let mut furthest = (0f32, String::new());
        for (name, x) in &wa {
            let y = &wb[name];
            assert_eq!(x.len(), y.len(), "{name}");
            for (u, v) in x.iter().zip(y) {
                if (u - v).abs() > furthest.0 {
                    furthest = ((u - v).abs(), name.clone());
                }
            }
        }
        eprintln!(
            "{world} ranks vs one process: losses within {worst:e}, weights within {:e} ({})",
            furthest.0, furthest.1
        );
        assert!(
            worst < 1e-5,
            "{world} ranks: the losses differ by up to {worst:e}"
        );
        assert!(
            furthest.0 < 1e-5,
            "{world} ranks: after 3 steps {} differs by {} from one process",
            furthest.1,
            furthest.0
        );
    }
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
