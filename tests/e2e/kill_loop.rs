//! `kill -9` at seeded random moments: `ingest mimic` and `train`, killed
//! again and again and then let finish, end exactly where an uninterrupted
//! run ends (byte-identical shards and manifest; bitwise identical
//! checkpoints; the same metrics).
//!
//! The kill moments are seeded, and measured so they land at comparable
//! moments (start-up, mid-shard, mid-step) on a fast or a slow, loaded
//! machine: a kill in the start-up is a fraction of the uninterrupted
//! reference run's start-up (or the first progress, if that comes
//! sooner); a kill "in the work" waits for the restarted
//! run's first progress on disk (so a slow start-up cannot eat it) and
//! then, for ingest, a fraction of the reference's work, for train, a
//! fraction of its own last progress interval after one more change of its
//! log. One more kill waits
//! for a moment too short to hit by chance (the end of an ingest, a
//! checkpoint write). The seed and every kill point are printed;
//! `KILL_LOOP_SEED=<n>` replays another sequence.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::util::*;

/// The default seed of the kill points.
const SEED: u64 = 12;
/// Kills per binary before the run is let finish.
const KILLS: usize = 5;
/// The signal `Child::kill` sends on Unix.
const SIGKILL: i32 = 9;

fn seed() -> u64 {
    std::env::var("KILL_LOOP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED)
}

/// SplitMix64: a few lines, seeded, the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + unit * (hi - lo)
    }
}

/// When to kill one run.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// This fraction of the reference's start-up after the start, or the
    /// run's first progress if that comes first: a reference timed on a
    /// more loaded machine has a longer start-up than the killed run.
    InStartUp(f64),
    /// This fraction of the reference's work after the run's first progress.
    InWork(f64),
    /// This fraction of the run's own last progress interval after its
    /// progress has changed this many times since the first: a moment of
    /// the run's own pace (mid-step of a training run), whatever the load
    /// of the machine.
    InSteps(u32, f64),
    /// As soon as the output folder shows the loop's event anew.
    OnEvent,
}

/// The kill plan of one loop: the first kill in the start-up, three in the
/// work, and last one on the loop's event (last, as the event may come only
/// at the end of the run). Each restarted run goes on from where the last
/// one stopped, so the kills in the work together cover about half of it.
fn kill_plan(seed: u64, salt: u64, pace: Pace) -> Vec<Kill> {
    let mut rng = Rng(seed ^ salt.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut plan = vec![Kill::InStartUp(rng.range(0.0, 1.0))];
    plan.extend((2..KILLS).map(|_| match pace {
        Pace::Reference => Kill::InWork(rng.range(0.05, 0.35)),
        Pace::OwnSteps => Kill::InSteps(1, rng.range(0.05, 0.6)),
    }));
    plan.push(Kill::OnEvent);
    plan
}

/// What the kills in the work are timed from.
#[derive(Clone, Copy)]
enum Pace {
    /// The reference run's work: for a target whose progress on disk is
    /// coarse (an ingest writes a few shards).
    Reference,
    /// The killed run's own progress (one change per checkpoint, see
    /// [`CONFIG`]): a training step is short, and its length under a loaded machine varies more
    /// than a fraction of the reference's work can absorb.
    OwnSteps,
}

/// How long the uninterrupted run took until its first progress on disk
/// (its start-up), and in all.
#[derive(Clone, Copy)]
struct Reference {
    start_up: Duration,
    total: Duration,
}

impl Reference {
    fn work(&self) -> Duration {
        self.total.saturating_sub(self.start_up)
    }
}

/// What one loop kills, and how it reads the output folder.
struct Target<'a> {
    name: &'static str,
    args: Vec<String>,
    /// A summary of the folder that changes once a run makes progress.
    progress: &'a dyn Fn() -> String,
    /// The event of [`Kill::OnEvent`], in words, and what shows it in the
    /// folder (`None` while it does not show; another value each time).
    event: (&'static str, &'a dyn Fn() -> Option<String>),
    /// A summary of the folder after a kill; it starts with "HALF" when a
    /// file that looks whole is not.
    state: &'a dyn Fn() -> String,
}

/// One kill: when, and what happened.
struct KillPoint {
    kill: Kill,
    /// Time from the start to the kill (or to the end of a run that ended first).
    at: Duration,
    /// Time from the start to the run's first progress, if seen.
    progress_at: Option<Duration>,
    /// `None` when the process was killed, its status when it ended first.
    ended_first: Option<ExitStatus>,
    /// What the output folder held after it.
    state: String,
}

impl KillPoint {
    /// Killed while at work (after its first progress).
    fn mid_work(&self) -> bool {
        self.ended_first.is_none() && self.progress_at.is_some()
    }
}

impl std::fmt::Display for KillPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.ended_first {
            None => "killed",
            Some(_) => "had ended first",
        };
        let progress = match self.progress_at {
            Some(d) => format!("first progress at {} ms", d.as_millis()),
            None => "no progress seen".into(),
        };
        write!(
            f,
            "{:?}: {what} at {} ms ({progress}); then {}",
            self.kill,
            self.at.as_millis(),
            self.state
        )
    }
}

fn spawn(name: &str, args: &[String], log: &Path) -> std::process::Child {
    Command::new(bin(name))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn")
}

fn assert_success(name: &str, status: ExitStatus, log: &Path) {
    assert!(
        status.success(),
        "{name} failed by itself: {status}\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Runs the target to the end, uninterrupted, timing it.
fn timed_run(t: &Target, log: &Path) -> Reference {
    let before = (t.progress)();
    let mut child = spawn(t.name, &t.args, log);
    let start = Instant::now();
    let mut start_up = None;
    while child.try_wait().unwrap().is_none() {
        if start_up.is_none() && (t.progress)() != before {
            start_up = Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let total = start.elapsed();
    assert_success(t.name, child.wait().unwrap(), log);
    Reference {
        // A run too quick to be seen at work: all of it is start-up.
        start_up: start_up.unwrap_or(total),
        total,
    }
}

/// Starts the target and SIGKILLs it (`Child::kill` on Unix) at `kill`,
/// unless it ends before; a run that ends by itself must succeed.
fn run_and_kill(t: &Target, r: Reference, kill: Kill, log: &Path) -> KillPoint {
    let before = (t.progress)();
    let event_before = (t.event.1)();
    let mut child = spawn(t.name, &t.args, log);
    let start = Instant::now();
    let mut progress_at = None;
    // The progress summary last seen, how often it changed after the first
    // progress, and when it last changed and the change before.
    let mut last = before.clone();
    let mut changes = 0u32;
    let mut changed_at = (Duration::ZERO, Duration::ZERO);
    // Bounded, should the moment never come.
    let limit = r.total * 4 + Duration::from_secs(5);
    let ended_first = loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_success(t.name, status, log);
            break Some(status);
        }
        let now = start.elapsed();
        let seen = (t.progress)();
        if seen != last {
            last = seen;
            if progress_at.is_none() {
                progress_at = Some(now);
            } else {
                changes += 1;
            }
            changed_at = (changed_at.1, now);
        }
        let due = match kill {
            Kill::InStartUp(f) => progress_at.is_some() || now >= r.start_up.mul_f64(f),
            Kill::InWork(f) => progress_at.is_some_and(|p| now >= p + r.work().mul_f64(f)),
            Kill::InSteps(n, f) => {
                changes >= n && now >= changed_at.1 + (changed_at.1 - changed_at.0).mul_f64(f)
            }
            Kill::OnEvent => (t.event.1)().is_some_and(|e| Some(&e) != event_before.as_ref()),
        };
        if due || now >= limit {
            // Fails only once the child is reaped, which `try_wait` would
            // have reported; the exit status tells whether the kill landed.
            child.kill().ok();
            let status = child.wait().unwrap();
            if status.signal() == Some(SIGKILL) {
                break None;
            }
            assert_success(t.name, status, log);
            break Some(status);
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    KillPoint {
        kill,
        at: start.elapsed(),
        progress_at,
        ended_first,
        state: (t.state)(),
    }
}

/// Runs the kill plan of `seed` on `t`, timed after the reference `r`.
/// Returns the kill points and their description (seed, reference timing
/// and every point), for failure messages.
fn kill_loop(
    t: &Target,
    r: Reference,
    (seed, salt, pace): (u64, u64, Pace),
    log: &Path,
) -> (Vec<KillPoint>, String) {
    let mut report = format!(
        "{}: seed {seed} (replay with KILL_LOOP_SEED={seed}); reference run {} ms, start-up {} ms; kill points:\n",
        t.name,
        r.total.as_millis(),
        r.start_up.as_millis()
    );
    let mut points = Vec::new();
    for (i, kill) in kill_plan(seed, salt, pace).into_iter().enumerate() {
        let point = run_and_kill(t, r, kill, log);
        println!("{} kill #{i}: {point}", t.name);
        writeln!(report, "  #{i}: {point}").unwrap();
        points.push(point);
    }
    (points, report)
}

/// One kill loop at a time: the kill moments are relative to durations
/// measured with the machine under some load, so the two loops here do not
/// add to each other's.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Names of the entries of a folder, sorted (empty when it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A file's modification time, to tell a file written anew from a stale one.
fn mtime(path: &Path) -> Option<String> {
    let t = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(format!(
        "{:?}",
        t.duration_since(std::time::UNIX_EPOCH).ok()?
    ))
}

// ---------------------------------------------------------------- ingest

/// A small world and its uninterrupted ingest (the reference of the ingest
/// loop, and the shards of the train loop).
struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
    reference: PathBuf,
    timing: Reference,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().join("world");
        world(
            &w,
            &["--studies", "150", "--padchest-images", "2", "--seed", "5"],
        );
        let root = w.join("mimic-cxr");
        let reference = dir.path().join("reference");
        let timing = {
            let (progress, event, state) = ingest_probes(&reference);
            let target = Target {
                name: "ingest",
                args: ingest_args(&root, &reference),
                progress: &progress,
                event: ("", &event),
                state: &state,
            };
            timed_run(&target, &dir.path().join("reference-stderr.log"))
        };
        Fixture {
            timing,
            dir,
            root,
            reference,
        }
    })
}

fn ingest_args(root: &Path, out: &Path) -> Vec<String> {
    let tok = tokenizer();
    [
        "mimic",
        "--root",
        root.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        // Many small shards: kills fall mid-shard and between shards.
        "--rows-per-shard",
        "3",
        "--short-side",
        "96",
        "--threads",
        "1",
    ]
    .map(str::to_string)
    .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Progress, event (the manifest written: the run is finishing) and state
/// of an ingest folder.
#[allow(clippy::type_complexity)]
fn ingest_probes(
    out: &Path,
) -> (
    impl Fn() -> String + '_,
    impl Fn() -> Option<String> + '_,
    impl Fn() -> String + '_,
) {
    // `.progress/` holds the run's fingerprint and one file per finished
    // group, and goes once the manifest is written.
    let progress = move || {
        format!(
            "{} in .progress, manifest {}",
            names(&out.join(".progress")).len(),
            out.join("manifest.json").exists()
        )
    };
    let event = move || mtime(&out.join("manifest.json"));
    (progress, event, move || ingest_state(out))
}

/// After a kill: every file named like a shard is a whole Parquet file.
fn ingest_state(out: &Path) -> String {
    let mut shards = 0;
    let mut others = Vec::new();
    for name in names(out) {
        if name.ends_with(".parquet") {
            if let Err(e) = ingest::shard::read_shard(&out.join(&name)) {
                return format!("HALF-WRITTEN SHARD VISIBLE: {name}: {e}");
            }
            shards += 1;
        } else {
            others.push(name);
        }
    }
    format!(
        "{shards} shards, {} files in .progress, other entries {others:?}",
        names(&out.join(".progress")).len()
    )
}

#[test]
fn ingest_killed_at_random_moments_ends_as_an_uninterrupted_run() {
    let _one = one_at_a_time();
    let f = fixture();
    let seed = seed();
    let out = f.dir.path().join("killed-ingest");
    let (progress, event, state) = ingest_probes(&out);
    let target = Target {
        name: "ingest",
        args: ingest_args(&f.root, &out),
        progress: &progress,
        // Between the manifest and the removal of `.progress/`.
        event: ("manifest.json is written", &event),
        state: &state,
    };
    let log = f.dir.path().join("ingest-stderr.log");
    let (points, report) = kill_loop(&target, f.timing, (seed, 1, Pace::Reference), &log);
    assert!(
        points.iter().all(|p| !p.state.starts_with("HALF")),
        "a killed run left a half-written shard visible\n{report}"
    );
    assert!(
        points.iter().filter(|p| p.mid_work()).count() >= 2,
        "fewer than two kills landed while ingest was at work: the loop tested little\n{report}"
    );

    run_ok("ingest", &strs(&target.args));
    let (a, b) = (folder_bytes(&f.reference), folder_bytes(&out));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "files of the killed-and-finished folder differ from the reference\n{report}"
    );
    for (name, bytes) in &a {
        assert!(
            bytes == &b[name],
            "{name} differs from the uninterrupted run's\n{report}"
        );
    }
    let (ma, mb) = (manifest(&f.reference), manifest(&out));
    assert_eq!(ma.counts, mb.counts, "manifest counts\n{report}");
    assert_eq!(ma.shards, mb.shards, "manifest shards\n{report}");
    assert_eq!(
        rows(&out).len() as u64,
        mb.counts.written,
        "rows read back\n{report}"
    );
    assert!(
        !out.join(".progress").exists(),
        "the finished folder still holds .progress/ ({} files)\n{report}",
        names(&out.join(".progress")).len()
    );
}

// ----------------------------------------------------------------- train

/// `train.steps` of [`CONFIG`].
const STEPS: u64 = 16;

/// The tiny model of the train tests on paired rows only, checkpointed
/// every other step so a kill between checkpoints loses steps that the
/// resumed run redoes (and logs again). A step's metrics line is written
/// one step late and a checkpoint step's at once, so the lines show up in
/// pairs: the log changes once per checkpoint. Each killed run sees two
/// changes before its kill, and 16 steps leave room for three such kills
/// (resuming at steps 4, 8 and 12) where two must land.
const CONFIG: &str = r#"
[model]
preset = "tiny"
[optim]
kind = "adamw"
lr = 1e-3
grad_clip = 1.0
[train]
steps = 16
warmup_steps = 2
batch_size = 8
paired_fraction = 1.0
loader_threads = 1
prefetch = 2
log_every = 1
checkpoint_every = 2
keep_last = 2
"#;

fn train_args(config: &Path, out: &Path) -> Vec<String> {
    [
        "--shards",
        fixture().reference.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]
    .map(str::to_string)
    .to_vec()
}

/// Progress (the steps in metrics.jsonl, which a resumed run also cuts
/// back to its checkpoint), event (a checkpoint folder being written) and state of a
/// run folder.
#[allow(clippy::type_complexity)]
fn train_probes(
    run: &Path,
) -> (
    impl Fn() -> String + '_,
    impl Fn() -> Option<String> + '_,
    impl Fn() -> String + '_,
) {
    // The steps logged: a resumed run rewriting the file to the same steps
    // is no progress.
    let progress = move || format!("{:?}", logged_steps(run));
    // A `.partial` folder written anew (a stale one keeps its time).
    let event = move || {
        let ckpts = run.join("checkpoints");
        let partial: Vec<String> = names(&ckpts)
            .into_iter()
            .filter(|n| n.ends_with(".partial"))
            .map(|n| format!("{n} {:?}", mtime(&ckpts.join(&n))))
            .collect();
        (!partial.is_empty()).then(|| partial.join(", "))
    };
    (progress, event, move || train_state(run))
}

/// After a kill: every checkpoint that looks whole is whole.
fn train_state(run: &Path) -> String {
    let ckpts = run.join("checkpoints");
    let kept = names(&ckpts);
    for name in kept.iter().filter(|n| !n.ends_with(".partial")) {
        for file in ["model.safetensors", "optimizer.safetensors", "state.json"] {
            if !ckpts.join(name).join(file).is_file() {
                return format!("HALF CHECKPOINT VISIBLE: {name} lacks {file}");
            }
        }
    }
    format!(
        "checkpoints {kept:?}, metrics steps {:?}, entries {:?}",
        logged_steps(run),
        names(run)
    )
}

/// The steps of the whole lines of a run's metrics.jsonl.
fn logged_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["step"].as_u64())
        .collect()
}

/// Each metrics line without its timing fields (throughput, loader wait).
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("metrics.jsonl: {e}: {l:?}"));
            let o = v.as_object_mut().expect("a metrics line is an object");
            o.remove("images_per_s");
            o.remove("loader_wait");
            v
        })
        .collect()
}

/// Every file under `dir`, by path relative to it.
fn tree_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn train_killed_at_random_moments_resumes_to_identical_weights() {
    let _one = one_at_a_time();
    let seed = seed();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, CONFIG).unwrap();

    // A first run loads libtorch from a cold page cache (seconds in a fresh
    // clone), which a restarted run does not: kill points timed from it
    // fall after the killed runs have finished. The reference timing is
    // taken from a second, warm run.
    let cold = dir.path().join("cold");
    let (progress, event, state) = train_probes(&cold);
    timed_run(
        &Target {
            name: "train",
            args: train_args(&cfg, &cold),
            progress: &progress,
            event: ("", &event),
            state: &state,
        },
        &dir.path().join("cold-stderr.log"),
    );
    let straight = dir.path().join("straight");
    let (progress, event, state) = train_probes(&straight);
    let timing = timed_run(
        &Target {
            name: "train",
            args: train_args(&cfg, &straight),
            progress: &progress,
            event: ("", &event),
            state: &state,
        },
        &dir.path().join("reference-stderr.log"),
    );

    let killed = dir.path().join("killed");
    let (progress, event, state) = train_probes(&killed);
    let target = Target {
        name: "train",
        args: train_args(&cfg, &killed),
        progress: &progress,
        event: ("a checkpoint is being written", &event),
        state: &state,
    };
    let log = dir.path().join("train-stderr.log");
    let (points, report) = kill_loop(&target, timing, (seed, 2, Pace::OwnSteps), &log);
    assert!(
        points.iter().all(|p| !p.state.starts_with("HALF")),
        "a killed run left a half-written checkpoint that looks whole\n{report}"
    );
    assert!(
        points.iter().filter(|p| p.mid_work()).count() >= 2,
        "fewer than two kills landed while train was at work: the loop tested little\n{report}"
    );

    run_ok("train", &strs(&target.args));

    // The checkpoints kept (keep_last = 2), each file bitwise: weights,
    // optimiser state and loader position.
    let (a, b) = (
        tree_bytes(&straight.join("checkpoints")),
        tree_bytes(&killed.join("checkpoints")),
    );
    let last = format!("step-{STEPS:08}/model.safetensors");
    assert!(a.contains_key(&last), "{last} missing: {:?}", a.keys());
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "checkpoint files differ\n{report}"
    );
    for (name, bytes) in &a {
        assert!(
            bytes == &b[name],
            "{name} is not bitwise identical to the uninterrupted run's\n{report}"
        );
    }
    assert_eq!(
        names(&straight),
        names(&killed),
        "entries of the run folders (a leftover .partial?)\n{report}"
    );

    let (ma, mb) = (metrics(&straight), metrics(&killed));
    assert_eq!(ma.last().unwrap()["step"], STEPS, "reference metrics");
    assert_eq!(
        mb.last().map(|v| v["step"].clone()),
        Some(STEPS.into()),
        "metrics.jsonl of the killed run does not end at step {STEPS}\n{report}"
    );
    // A resumed run continues the metrics from its checkpoint: no step
    // twice, none missing, the same losses.
    let steps = |m: &[serde_json::Value]| m.iter().map(|v| v["step"].clone()).collect::<Vec<_>>();
    assert_eq!(
        steps(&ma),
        steps(&mb),
        "metrics.jsonl steps of the killed-and-resumed run\n{report}"
    );
    assert_eq!(ma, mb, "metrics.jsonl lines (without timings)\n{report}");
}
