//! Atomic, resumable, deterministic shard writing.
//!
//! Input rows are planned up front in a fixed order and cut into groups of
//! `rows_per_shard`; group `i` becomes `shard-i.parquet` whatever happened to
//! the other groups. That is what makes a run resumable and reproducible:
//! a shard's bytes depend only on its own input rows, so a killed run that is
//! started again skips the groups already finished and writes the rest, and
//! the result is byte-identical to an uninterrupted run.
//!
//! Every file is written to a temporary name and renamed into place, so a
//! half-written shard is never visible. Progress lives in `.progress/` inside
//! the output folder (one small JSON per finished group); it is removed once
//! `manifest.json` is written, which is the last step of a run.
//!
//! A folder is bound to what made it by its [`Fingerprint`]
//! (`fingerprint.json.gz`, written before the first shard): the arguments
//! with paths made absolute, the tokenizer and sidecar hashes, the planned
//! rows, and the size and modification time of every input file. Resuming an
//! interrupted run and re-running a finished one both require the same
//! fingerprint; otherwise the run stops and says what changed. Temporary
//! files and progress left by a killed run are removed by the next run.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use rayon::prelude::*;
use schemas::{
    Counts, EntitySourceInfo, FINGERPRINT_FILE, FileDigest, ImagePolicy, MANIFEST_FILE, Manifest,
    PartInfo, REJECTS_FILE, Reject, SCHEMA_VERSION, ShardEntry, Source, Stage, shard_file_name,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
pub(crate) use shards::temporary_path;
/// The row type, its batch builder and the hashes live with the shard
/// format's other readers and writers in `shards`; re-exported here for
/// the callers of this module.
pub use shards::{Row, rows_to_batch, sha256_file, sha256_hex};

const PROGRESS_DIR: &str = ".progress";
const RUN_FILE: &str = "run.json";

/// Why shards could not be written. User data never causes these: bad rows
/// become [`Reject`]s.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// A file in the output folder could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Arrow or Parquet refused the data (a bug, not bad input).
    #[error("{path}: {message}")]
    Format {
        /// The shard.
        path: PathBuf,
        /// The library's message.
        message: String,
    },
    /// The output folder holds a run with other inputs or arguments.
    #[error(
        "{path} holds a run with different inputs or arguments; use another --out folder or remove it"
    )]
    DifferentRun {
        /// The progress file that disagrees.
        path: PathBuf,
    },
    /// The output folder holds a run made from other arguments or inputs;
    /// `change` says which.
    #[error(
        "{}: the {} run in this folder was made from different arguments or inputs: {change}; use another --out folder or remove this one",
        dir.display(),
        if *finished { "finished (manifest.json)" } else { "interrupted" }
    )]
    Changed {
        /// The output folder.
        dir: PathBuf,
        /// Whether that run had finished.
        finished: bool,
        /// What differs, with the old and new values.
        change: String,
    },
    /// The output path exists and is not a folder.
    #[error("{}: exists and is not a folder", path.display())]
    NotAFolder {
        /// The path.
        path: PathBuf,
    },
    /// `--strict` was given and a row was rejected.
    #[error("strict mode: {}: {} (stage {})", .0.path, .0.reason, .0.stage.name())]
    Strict(Box<Reject>),
}

impl From<shards::ShardsError> for ShardError {
    fn from(e: shards::ShardsError) -> ShardError {
        match e {
            shards::ShardsError::Io { path, source } => ShardError::Io { path, source },
            other => ShardError::Format {
                path: other.path().to_path_buf(),
                message: other.reason(),
            },
        }
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ShardError + '_ {
    move |source| ShardError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What became of one input row.
#[derive(Debug)]
pub enum Outcome {
    /// Written.
    Row(Box<Row>),
    /// Left out by a filter the user asked for.
    Filtered,
    /// Not written, for a reason.
    Rejected(Box<Reject>),
}

/// Sizes of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardOptions {
    /// Input rows per shard (a shard holds fewer when rows are rejected or filtered).
    pub rows_per_shard: usize,
    /// Rows per Parquet row group: the loader's unit of reading.
    pub row_group_rows: usize,
    /// zstd level for every column.
    pub zstd_level: i32,
    /// Stop at the first rejected row.
    pub strict: bool,
    /// Write only this part of the planned rows (`--part I/N`). Not one of
    /// the recorded arguments: every part, and their merge, records the
    /// arguments of the whole run; the part is recorded on its own.
    #[serde(skip)]
    pub part: Option<Part>,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            rows_per_shard: 1024,
            row_group_rows: 256,
            zstd_level: 3,
            strict: false,
            part: None,
        }
    }
}

/// Part `index` (1-based) of `count` of a partitioned run.
///
/// The planned rows are cut into groups of `rows_per_shard`, as in a whole
/// run; part `index` takes the contiguous groups
/// `⌊(index−1)·G/count⌋ .. ⌊index·G/count⌋` of the `G` groups. Each group is
/// one shard whose bytes depend only on its own rows, so the parts' shards
/// are the whole run's shards under the same names, and `ingest merge` only
/// has to place them side by side. Rows of one study are adjacent in the
/// plan and stay together except where a group boundary falls inside a
/// study, which changes nothing in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    index: u32,
    count: u32,
}

impl Part {
    /// Part `index` of `count`; `None` unless `1 <= index <= count`.
    pub fn new(index: u32, count: u32) -> Option<Part> {
        (index >= 1 && index <= count).then_some(Part { index, count })
    }

    /// 1-based part number.
    pub fn index(self) -> u32 {
        self.index
    }

    /// Number of parts.
    pub fn count(self) -> u32 {
        self.count
    }

    /// The groups (shard indices) this part writes out of `total` groups.
    pub fn groups(self, total: u64) -> std::ops::Range<u64> {
        let cut = |i: u32| total * u64::from(i) / u64::from(self.count);
        cut(self.index - 1)..cut(self.index)
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Part {
    type Err = String;

    /// `I/N`, for example `2/3`.
    fn from_str(text: &str) -> Result<Part, String> {
        let bad = || format!("{text:?} is not I/N with 1 <= I <= N (for example 2/3)");
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (i, n) = (
            i.trim().parse::<u32>().map_err(|_| bad())?,
            n.trim().parse::<u32>().map_err(|_| bad())?,
        );
        Part::new(i, n).ok_or_else(bad)
    }
}

/// The record of one finished group, kept in `.progress/` until the run ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GroupDone {
    shard: Option<ShardEntry>,
    counts: Counts,
    rejects: Vec<Reject>,
}

/// What [`write_shards`] produced.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// Non-empty shards in order.
    pub shards: Vec<ShardEntry>,
    /// Counts over the processed rows.
    pub counts: Counts,
    /// Rejects in input order.
    pub rejects: Vec<Reject>,
    /// Groups taken from an earlier, interrupted run.
    pub resumed_groups: usize,
}

/// What a source's planner found in the release's index: the rows to
/// process, in their fixed order, and the index rows already rejected.
#[derive(Debug)]
pub struct Planned<I> {
    /// Rows to process.
    pub items: Vec<I>,
    /// Index rows that could not be planned (stage `csv`).
    pub rejects: Vec<Reject>,
    /// Index rows read, good or bad.
    pub seen: u64,
}

/// The manifest facts of a run that do not come from its rows.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// The release.
    pub source: Source,
    /// The resolved arguments (recorded, and compared when a run is resumed).
    pub arguments: serde_json::Value,
    /// Image policy in force.
    pub image_policy: ImagePolicy,
    /// Tokenizer file, for paired sources.
    pub tokenizer: Option<FileDigest>,
    /// Entity source, for paired sources.
    pub entities: Option<EntitySourceInfo>,
    /// Files whose bytes decide the rows (index CSVs, reports, images),
    /// in a fixed order. Those that exist are fingerprinted by size and
    /// modification time (hashing every image would read the whole release
    /// on each run); missing ones are left out, so a deleted file shows as
    /// removed.
    pub inputs: Vec<PathBuf>,
}

/// One input file as the fingerprint records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// Path as the source planned it (under the absolute root).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch (0 when the
    /// filesystem gives none).
    pub modified_ns: u64,
}

/// Everything that decided a run's output. Stored as `fingerprint.json.gz`
/// in the output folder; a run resumes or reuses a folder only when the
/// fingerprint is the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Version of the `ingest` tool.
    pub tool_version: String,
    /// The resolved arguments (paths absolute).
    pub arguments: serde_json::Value,
    /// sha256 of the tokenizer file.
    pub tokenizer_sha256: Option<String>,
    /// sha256 of the entity sidecar.
    pub sidecar_sha256: Option<String>,
    /// sha256 over the planned rows in order (ids, views, splits, labels,
    /// paths) and the index rows rejected while planning.
    pub plan_sha256: String,
    /// Rows planned.
    pub planned_rows: u64,
    /// The input files that exist, in planning order.
    pub inputs: Vec<InputFile>,
    /// The part written, for a partitioned run; absent for a whole run (so
    /// that a whole run's fingerprint is as it was before parts existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,
}

impl Fingerprint {
    /// The fingerprint of a run about to start: stats every input file.
    pub fn new<I: std::fmt::Debug>(info: &RunInfo, planned: &Planned<I>) -> Fingerprint {
        let mut plan = Sha256::new();
        for item in &planned.items {
            plan.update(format!("{item:?}\n").as_bytes());
        }
        for reject in &planned.rejects {
            plan.update(format!("reject {reject:?}\n").as_bytes());
        }
        plan.update(format!("seen {}\n", planned.seen).as_bytes());
        // A study's report is listed once per image; each file counts once.
        let mut listed = std::collections::HashSet::new();
        let unique: Vec<&PathBuf> = info.inputs.iter().filter(|p| listed.insert(*p)).collect();
        // Ordered parallel map: a release has a million files, and on a
        // network filesystem each stat waits for a round trip.
        let inputs = unique
            .par_iter()
            .filter_map(|path| {
                let meta = fs::metadata(path).ok()?;
                let modified_ns = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos() as u64);
                Some(InputFile {
                    path: path.display().to_string(),
                    size: meta.len(),
                    modified_ns,
                })
            })
            .collect();
        Fingerprint {
            tool_version: env!("CARGO_PKG_VERSION").into(),
            arguments: info.arguments.clone(),
            tokenizer_sha256: info.tokenizer.as_ref().map(|d| d.sha256.clone()),
            sidecar_sha256: info
                .entities
                .as_ref()
                .and_then(|e| e.sidecar.as_ref())
                .map(|d| d.sha256.clone()),
            plan_sha256: hex::encode(plan.finalize()),
            planned_rows: planned.items.len() as u64,
            inputs,
            part: None,
        }
    }

    /// What differs from `now`, in words naming each argument with its old
    /// and new value, the hashes and the input files; `None` when nothing does.
    pub fn changes(&self, now: &Fingerprint) -> Option<String> {
        let mut changes = Vec::new();
        if self.tool_version != now.tool_version {
            changes.push(format!(
                "made by ingest {}, this is {}",
                self.tool_version, now.tool_version
            ));
        }
        argument_changes("", &self.arguments, &now.arguments, &mut changes);
        if self.part != now.part {
            let show = |p: &Option<Part>| {
                p.map_or_else(|| "a whole run".to_string(), |p| format!("part {p}"))
            };
            changes.push(format!(
                "--part: was {}, now {}",
                show(&self.part),
                show(&now.part)
            ));
        }
        let hash = |name: &str, old: &Option<String>, new: &Option<String>| {
            let show = |h: &Option<String>| h.clone().unwrap_or_else(|| "none".into());
            (old != new).then(|| {
                format!(
                    "{name} sha256 changed: was {}, now {}",
                    show(old),
                    show(new)
                )
            })
        };
        changes.extend(hash(
            "tokenizer",
            &self.tokenizer_sha256,
            &now.tokenizer_sha256,
        ));
        changes.extend(hash("sidecar", &self.sidecar_sha256, &now.sidecar_sha256));
        if let Some(c) = input_changes(&self.inputs, &now.inputs) {
            changes.push(c);
        }
        if self.plan_sha256 != now.plan_sha256 {
            changes.push(format!(
                "the index CSVs plan different rows (ids, views, splits or labels): {} rows before, {} now",
                self.planned_rows, now.planned_rows
            ));
        }
        (!changes.is_empty()).then(|| changes.join("; "))
    }

    pub(crate) fn to_gzip(&self) -> Vec<u8> {
        use flate2::{Compression as Gz, write::GzEncoder};
        let json = serde_json::to_vec(self).expect("serialisable");
        // No name or time in the gzip header: the file depends on the inputs only.
        let mut enc = GzEncoder::new(Vec::new(), Gz::default());
        enc.write_all(&json).expect("writing to memory");
        enc.finish().expect("writing to memory")
    }

    pub(crate) fn from_gzip(bytes: &[u8]) -> Option<Fingerprint> {
        serde_json::from_reader(flate2::read::GzDecoder::new(bytes)).ok()
    }
}

/// Appends one line per argument that differs: its dotted name, old and new value.
pub(crate) fn argument_changes(
    name: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let name = if name.is_empty() {
                    key.clone()
                } else {
                    format!("{name}.{key}")
                };
                let (o, n) = (
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                );
                argument_changes(&name, o, n, out);
            }
        }
        _ if old != new => out.push(format!("argument `{name}` was {old}, now {new}")),
        _ => {}
    }
}

/// Counts of input files added, removed and modified, with an example of each.
fn input_changes(old: &[InputFile], new: &[InputFile]) -> Option<String> {
    use std::collections::HashMap;
    let before: HashMap<&str, &InputFile> = old.iter().map(|f| (f.path.as_str(), f)).collect();
    let after: HashMap<&str, &InputFile> = new.iter().map(|f| (f.path.as_str(), f)).collect();
    // Examples in planning order, so that the message is the same every time.
    let added: Vec<&str> = new
        .iter()
        .map(|f| f.path.as_str())
        .filter(|p| !before.contains_key(p))
        .collect();
    let removed: Vec<&str> = old
        .iter()
        .map(|f| f.path.as_str())
        .filter(|p| !after.contains_key(p))
        .collect();
    let modified: Vec<&str> = new
        .iter()
        .filter(|f| before.get(f.path.as_str()).is_some_and(|o| *o != *f))
        .map(|f| f.path.as_str())
        .collect();
    if added.is_empty() && removed.is_empty() && modified.is_empty() {
        return None;
    }
    let examples: Vec<String> = [
        ("added", &added),
        ("removed", &removed),
        ("modified", &modified),
    ]
    .iter()
    .filter_map(|(what, list)| list.first().map(|p| format!("{what} {p}")))
    .collect();
    Some(format!(
        "input listing changed: {} files added, {} removed, {} modified (size or modification time), e.g. {}",
        added.len(),
        removed.len(),
        modified.len(),
        examples.join(", ")
    ))
}

/// Runs a whole ingest over planned rows: resumes or skips a run already in
/// `out`, writes the shards, then the reject log and the manifest. The
/// sources differ only in how they plan and in `process`.
pub fn run<I: Sync + std::fmt::Debug>(
    out: &Path,
    opts: &ShardOptions,
    info: RunInfo,
    planned: Planned<I>,
    process: impl Fn(&I) -> Outcome + Sync,
    progress: &ProgressBar,
) -> Result<Manifest, ShardError> {
    if out.exists() && !out.is_dir() {
        return Err(ShardError::NotAFolder {
            path: out.to_path_buf(),
        });
    }
    fs::create_dir_all(out).map_err(io_err(out))?;
    let mut fingerprint = Fingerprint::new(&info, &planned);
    fingerprint.part = opts.part;
    if let Some(done) = bind_folder(out, &fingerprint)? {
        return Ok(done);
    }
    // A partitioned run writes its share of the groups; the rows refused
    // while planning (and their count) go to part 1 alone, so that the
    // parts' counts and reject logs add up to the whole run's.
    let rows_per_shard = opts.rows_per_shard.max(1);
    let total_groups = planned.items.len().div_ceil(rows_per_shard) as u64;
    let groups = opts
        .part
        .map_or(0..total_groups, |p| p.groups(total_groups));
    let plan_level = opts.part.is_none_or(|p| p.index() == 1);
    let part = opts.part.map(|p| PartInfo {
        index: p.index(),
        count: p.count(),
        first_group: groups.start,
        end_group: groups.end,
        total_groups,
        planned_rows: planned.items.len() as u64,
        plan_sha256: fingerprint.plan_sha256.clone(),
    });
    let row_range = |g: u64| (g as usize * rows_per_shard).min(planned.items.len());
    let items = &planned.items[row_range(groups.start)..row_range(groups.end)];
    if opts.strict
        && plan_level
        && let Some(first) = planned.rejects.first()
    {
        return Err(ShardError::Strict(Box::new(first.clone())));
    }
    // The progress files name the fingerprint they belong to, a second guard
    // beside `fingerprint.json.gz`.
    let fingerprint = serde_json::json!({
        "fingerprint_sha256": sha256_hex(&fingerprint.to_gzip()),
    });
    progress.set_length(items.len() as u64);
    let written = write_groups(
        out,
        opts,
        &fingerprint,
        items,
        groups.start as usize,
        process,
        progress,
    )?;

    let mut counts = written.counts;
    let mut rejects = Vec::new();
    if plan_level {
        counts.seen += planned.seen - planned.items.len() as u64;
        if !planned.rejects.is_empty() {
            *counts.rejected.entry(Stage::Csv).or_default() += planned.rejects.len() as u64;
        }
        rejects = planned.rejects;
    }
    rejects.extend(written.rejects);
    let manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        source: info.source,
        arguments: info.arguments,
        image_policy: info.image_policy,
        tokenizer: info.tokenizer,
        entities: info.entities,
        counts,
        shards: written.shards,
        part,
    };
    finish(out, &manifest, &rejects)?;
    Ok(manifest)
}

/// Writes `items` as shards into `out`, resuming an interrupted run with the
/// same `fingerprint` (the resolved arguments and input listing).
pub fn write_shards<I: Sync>(
    out: &Path,
    opts: &ShardOptions,
    fingerprint: &serde_json::Value,
    items: &[I],
    process: impl Fn(&I) -> Outcome + Sync,
    progress: &ProgressBar,
) -> Result<Written, ShardError> {
    write_groups(out, opts, fingerprint, items, 0, process, progress)
}

/// [`write_shards`] over the groups of `items`, numbered from `first_group`
/// (a part of a partitioned run starts inside the whole plan).
fn write_groups<I: Sync>(
    out: &Path,
    opts: &ShardOptions,
    fingerprint: &serde_json::Value,
    items: &[I],
    first_group: usize,
    process: impl Fn(&I) -> Outcome + Sync,
    progress: &ProgressBar,
) -> Result<Written, ShardError> {
    let progress_dir = out.join(PROGRESS_DIR);
    fs::create_dir_all(&progress_dir).map_err(io_err(&progress_dir))?;
    check_fingerprint(&progress_dir.join(RUN_FILE), fingerprint)?;

    let mut written = Written::default();
    for (offset, group) in items.chunks(opts.rows_per_shard.max(1)).enumerate() {
        let index = first_group + offset;
        let done_path = progress_dir.join(format!("group-{index:05}.json"));
        let done = match read_done(out, &done_path) {
            Some(done) => {
                written.resumed_groups += 1;
                progress.inc(group.len() as u64);
                done
            }
            None => {
                let done = write_group(out, index, group, opts, &process, progress)?;
                write_atomic(
                    &done_path,
                    &serde_json::to_vec(&done).expect("serialisable"),
                )?;
                done
            }
        };
        written.counts.add(&done.counts);
        written.rejects.extend(done.rejects);
        written.shards.extend(done.shard);
    }
    Ok(written)
}

/// Writes `rejects.jsonl` and then `manifest.json` (the marker of a finished
/// run), and removes the progress folder.
pub fn finish(out: &Path, manifest: &Manifest, rejects: &[Reject]) -> Result<(), ShardError> {
    let mut lines = Vec::new();
    for r in rejects {
        serde_json::to_writer(&mut lines, r).expect("serialisable");
        lines.push(b'\n');
    }
    write_atomic(&out.join(REJECTS_FILE), &lines)?;
    let mut json = serde_json::to_vec_pretty(manifest).expect("serialisable");
    json.push(b'\n');
    write_atomic(&out.join(MANIFEST_FILE), &json)?;
    let progress_dir = out.join(PROGRESS_DIR);
    if progress_dir.exists() {
        fs::remove_dir_all(&progress_dir).map_err(io_err(&progress_dir))?;
    }
    Ok(())
}

/// Binds `out` to `fingerprint` before anything is written: a folder made
/// from other inputs is refused with what changed, a new one records the
/// fingerprint, and leftovers of a killed run are removed. Returns the
/// manifest when the same run has already finished (running again is then a
/// no-op).
fn bind_folder(out: &Path, fingerprint: &Fingerprint) -> Result<Option<Manifest>, ShardError> {
    let manifest_path = out.join(MANIFEST_FILE);
    let manifest = match fs::read(&manifest_path) {
        Ok(bytes) => Some(serde_json::from_slice::<Manifest>(&bytes).map_err(|_| {
            ShardError::DifferentRun {
                path: manifest_path.clone(),
            }
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(ShardError::Io {
                path: manifest_path,
                source,
            });
        }
    };
    let fp_path = out.join(FINGERPRINT_FILE);
    match fs::read(&fp_path) {
        Ok(bytes) => {
            let Some(before) = Fingerprint::from_gzip(&bytes) else {
                return Err(ShardError::DifferentRun { path: fp_path });
            };
            if let Some(change) = before.changes(fingerprint) {
                return Err(ShardError::Changed {
                    dir: out.to_path_buf(),
                    finished: manifest.is_some(),
                    change,
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if manifest.is_some() {
                // Finished by a version that kept no fingerprint: nothing
                // says what it was made from.
                return Err(ShardError::DifferentRun {
                    path: manifest_path,
                });
            }
            // Progress not bound to a fingerprint cannot be trusted.
            let progress_dir = out.join(PROGRESS_DIR);
            if progress_dir.exists() {
                fs::remove_dir_all(&progress_dir).map_err(io_err(&progress_dir))?;
            }
            write_atomic(&fp_path, &fingerprint.to_gzip())?;
        }
        Err(source) => {
            return Err(ShardError::Io {
                path: fp_path,
                source,
            });
        }
    }
    remove_stale(out, manifest.is_some())?;
    Ok(manifest)
}

/// Removes what a killed run leaves behind: temporary files of this tool's
/// outputs, and the progress folder of a run that had already written its
/// manifest. Other files in the folder are the user's and are left alone.
pub(crate) fn remove_stale(out: &Path, finished: bool) -> Result<(), ShardError> {
    let progress_dir = out.join(PROGRESS_DIR);
    if finished && progress_dir.exists() {
        fs::remove_dir_all(&progress_dir).map_err(io_err(&progress_dir))?;
    }
    let ours = |name: &str| {
        [MANIFEST_FILE, REJECTS_FILE, FINGERPRINT_FILE].contains(&name)
            || (name.starts_with("shard-") && name.ends_with(".parquet"))
    };
    for (dir, all) in [(out, false), (progress_dir.as_path(), true)] {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(ShardError::Io {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        };
        for entry in entries {
            let path = entry.map_err(io_err(dir))?.path();
            let stale = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".tmp"))
                .is_some_and(|n| all || ours(n));
            if stale && path.is_file() {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
    }
    Ok(())
}

/// Refuses to mix two different runs in one folder.
fn check_fingerprint(path: &Path, fingerprint: &serde_json::Value) -> Result<(), ShardError> {
    let want = serde_json::to_vec_pretty(fingerprint).expect("serialisable");
    match fs::read(path) {
        Ok(have) if have == want => Ok(()),
        Ok(_) => Err(ShardError::DifferentRun {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A finished run leaves no progress folder; starting over it would
            // silently mix two runs' shards.
            let manifest = path
                .parent()
                .and_then(Path::parent)
                .map(|d| d.join(MANIFEST_FILE));
            if let Some(m) = manifest.filter(|m| m.exists()) {
                return Err(ShardError::DifferentRun { path: m });
            }
            write_atomic(path, &want)
        }
        Err(source) => Err(ShardError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A finished group whose shard is still on disk as recorded; anything else
/// (missing, unreadable, or a shard that changed since) means "do it again".
fn read_done(out: &Path, done_path: &Path) -> Option<GroupDone> {
    let done: GroupDone = serde_json::from_slice(&fs::read(done_path).ok()?).ok()?;
    if let Some(shard) = &done.shard {
        let bytes = fs::read(out.join(&shard.file)).ok()?;
        if sha256_hex(&bytes) != shard.sha256 {
            return None;
        }
    }
    Some(done)
}

fn write_group<I: Sync>(
    out: &Path,
    index: usize,
    group: &[I],
    opts: &ShardOptions,
    process: &(impl Fn(&I) -> Outcome + Sync),
    progress: &ProgressBar,
) -> Result<GroupDone, ShardError> {
    // Ordered parallel map: rows keep input order whatever the thread count.
    let outcomes: Vec<Outcome> = group
        .par_iter()
        .map(|item| {
            let o = process(item);
            progress.inc(1);
            o
        })
        .collect();

    let mut counts = Counts {
        seen: group.len() as u64,
        ..Default::default()
    };
    let mut rows = Vec::new();
    let mut rejects = Vec::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Row(row) => rows.push(*row),
            Outcome::Filtered => counts.filtered += 1,
            Outcome::Rejected(reject) => {
                if opts.strict {
                    return Err(ShardError::Strict(reject));
                }
                *counts.rejected.entry(reject.stage).or_default() += 1;
                rejects.push(*reject);
            }
        }
    }
    counts.written = rows.len() as u64;

    let shard = if rows.is_empty() {
        None
    } else {
        let file = shard_file_name(index);
        let path = out.join(&file);
        let bytes = encode_shard(&rows, opts).map_err(|message| ShardError::Format {
            path: path.clone(),
            message,
        })?;
        write_atomic(&path, &bytes)?;
        Some(ShardEntry {
            file,
            rows: rows.len() as u64,
            sha256: sha256_hex(&bytes),
        })
    };
    Ok(GroupDone {
        shard,
        counts,
        rejects,
    })
}

/// Parquet bytes of `rows`: zstd on every column, row groups sized for the loader.
pub fn encode_shard(rows: &[Row], opts: &ShardOptions) -> Result<Vec<u8>, String> {
    shards::encode_rows(rows, opts.row_group_rows, opts.zstd_level)
}

/// Reads a shard back into rows: the inverse of [`rows_to_batch`], for tests,
/// tools and small data. (The training loader reads columns, not rows.)
pub fn read_shard(path: &Path) -> Result<Vec<Row>, ShardError> {
    Ok(shards::read_rows(path)?)
}

/// Writes `bytes` to `path` so that readers see either the old file or the
/// whole new one (see [`shards::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ShardError> {
    Ok(shards::write_atomic(path, bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{EntitySpan, Stage};

    fn row(i: usize) -> Row {
        Row {
            source: "mimic".into(),
            subject_id: format!("1{i:07}"),
            study_id: format!("5{i:07}"),
            image_id: format!("img{i}"),
            split: "train".into(),
            view: "PA".into(),
            paired: true,
            image: vec![i as u8; 12],
            image_height: 3,
            image_width: 4,
            orig_rows: 30,
            orig_cols: 40,
            bits_stored: 12,
            photometric: "MONOCHROME2".into(),
            text: Some("no effusion".into()),
            token_ids: Some(vec![49406, 871, 49407]),
            truncated: Some(false),
            entity_spans: Some(vec![EntitySpan {
                start: 3,
                end: 11,
                label: "ENTITY".into(),
            }]),
            entity_mask: Some(vec![false, true, false]),
            entity_source: Some("lexicon".into()),
            labels: [Some(1); 14],
            ..Default::default()
        }
    }

    fn process(i: &usize) -> Outcome {
        match i % 5 {
            3 => Outcome::Filtered,
            4 => Outcome::Rejected(Box::new(Reject {
                path: format!("f{i}"),
                subject_id: None,
                study_id: None,
                image_id: Some(format!("img{i}")),
                stage: Stage::ImageDecode,
                reason: "bad".into(),
            })),
            _ => Outcome::Row(Box::new(row(*i))),
        }
    }

    fn opts() -> ShardOptions {
        ShardOptions {
            rows_per_shard: 4,
            row_group_rows: 2,
            ..Default::default()
        }
    }

    #[test]
    fn batch_matches_the_schema_and_counts_reconcile() {
        let dir = tempfile::tempdir().unwrap();
        let items: Vec<usize> = (0..10).collect();
        let fp = serde_json::json!({"a": 1});
        let w = write_shards(
            dir.path(),
            &opts(),
            &fp,
            &items,
            process,
            &ProgressBar::hidden(),
        )
        .unwrap();
        assert_eq!(w.counts.seen, 10);
        assert_eq!(w.counts.filtered, 2);
        assert_eq!(w.counts.rejected_total(), 2);
        assert_eq!(w.counts.written, 6);
        assert!(w.counts.reconciles());
        // Group 2 (items 8, 9) is all filtered or rejected: it writes no shard.
        assert_eq!(
            w.shards.iter().map(|s| s.file.as_str()).collect::<Vec<_>>(),
            ["shard-00000.parquet", "shard-00001.parquet"]
        );
        assert_eq!(w.shards.iter().map(|s| s.rows).sum::<u64>(), 6);
        assert_eq!(
            w.rejects
                .iter()
                .map(|r| r.path.as_str())
                .collect::<Vec<_>>(),
            ["f4", "f9"]
        );
        let back = read_shard(&dir.path().join(&w.shards[0].file)).unwrap();
        assert_eq!(back, vec![row(0), row(1), row(2)]);
    }

    #[test]
    fn resumed_run_gives_identical_shards_and_skips_finished_groups() {
        let items: Vec<usize> = (0..10).collect();
        let fp = serde_json::json!({"a": 1});
        let whole = tempfile::tempdir().unwrap();
        let w1 = write_shards(
            whole.path(),
            &opts(),
            &fp,
            &items,
            process,
            &ProgressBar::hidden(),
        )
        .unwrap();

        // Simulate a run killed after its first group: only group 0 finished,
        // and a stray temporary file from the killed shard write is left behind.
        let killed = tempfile::tempdir().unwrap();
        write_shards(
            killed.path(),
            &opts(),
            &fp,
            &items[..4],
            process,
            &ProgressBar::hidden(),
        )
        .unwrap();
        fs::write(killed.path().join("shard-00001.parquet.tmp"), b"half").unwrap();
        let w2 = write_shards(
            killed.path(),
            &opts(),
            &fp,
            &items,
            process,
            &ProgressBar::hidden(),
        )
        .unwrap();
        assert_eq!(w2.resumed_groups, 1);
        assert_eq!(w1.shards, w2.shards);
        for s in &w1.shards {
            assert_eq!(
                fs::read(whole.path().join(&s.file)).unwrap(),
                fs::read(killed.path().join(&s.file)).unwrap()
            );
        }
    }

    #[test]
    fn a_changed_shard_is_rewritten_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let items: Vec<usize> = (0..4).collect();
        let fp = serde_json::json!({});
        let w1 = write_shards(
            dir.path(),
            &opts(),
            &fp,
            &items,
            process,
            &ProgressBar::hidden(),
        )
        .unwrap();
        fs::write(dir.path().join(&w1.shards[0].file), b"corrupted").unwrap();
        let w2 = write_shards(
            dir.path(),
            &opts(),
            &fp,
            &items,
            process,
            &ProgressBar::hidden(),
        )
        .unwrap();
        assert_eq!(w2.resumed_groups, 0);
        assert_eq!(
            sha256_file(&dir.path().join(&w1.shards[0].file)).unwrap(),
            w1.shards[0].sha256
        );
    }

    #[test]
    fn refuses_to_mix_runs_with_different_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let items: Vec<usize> = (0..4).collect();
        write_shards(
            dir.path(),
            &opts(),
            &serde_json::json!({"a": 1}),
            &items,
            process,
            &ProgressBar::hidden(),
        )
        .unwrap();
        let err = write_shards(
            dir.path(),
            &opts(),
            &serde_json::json!({"a": 2}),
            &items,
            process,
            &ProgressBar::hidden(),
        )
        .unwrap_err();
        assert!(matches!(err, ShardError::DifferentRun { .. }), "{err}");
    }

    fn info(arguments: serde_json::Value, inputs: Vec<PathBuf>) -> RunInfo {
        RunInfo {
            source: Source::Mimic,
            arguments,
            image_policy: ImagePolicy::default(),
            tokenizer: None,
            entities: None,
            inputs,
        }
    }

    fn planned(n: usize) -> Planned<usize> {
        Planned {
            items: (0..n).collect(),
            rejects: Vec::new(),
            seen: n as u64,
        }
    }

    fn run_once(out: &Path, info: RunInfo) -> Result<Manifest, ShardError> {
        run(
            out,
            &opts(),
            info,
            planned(10),
            process,
            &ProgressBar::hidden(),
        )
    }

    #[test]
    fn changes_name_each_argument_with_its_old_and_new_value() {
        let a = Fingerprint::new(
            &info(
                serde_json::json!({"root": "/w", "image": {"short_side": 64}}),
                vec![],
            ),
            &planned(3),
        );
        let mut b = a.clone();
        b.arguments = serde_json::json!({"root": "/w", "image": {"short_side": 96}});
        b.tokenizer_sha256 = Some("ab".into());
        let change = a.changes(&b).unwrap();
        assert!(
            change.contains("argument `image.short_side` was 64, now 96"),
            "{change}"
        );
        assert!(!change.contains("root"), "{change}");
        assert!(
            change.contains("tokenizer sha256 changed: was none, now ab"),
            "{change}"
        );
        assert_eq!(a.changes(&a.clone()), None);
    }

    #[test]
    fn finished_folder_is_reused_only_with_the_same_inputs_and_says_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut inputs: Vec<PathBuf> = (0..4).map(|i| dir.path().join(format!("in{i}"))).collect();
        for p in &inputs {
            fs::write(p, b"input").unwrap();
        }
        // Listed twice (a report of two images), counted once.
        inputs.push(inputs[1].clone());
        let args = serde_json::json!({"a": 1});
        let first = run_once(&out, info(args.clone(), inputs.clone())).unwrap();
        assert!(out.join(FINGERPRINT_FILE).is_file());
        assert_eq!(
            run_once(&out, info(args.clone(), inputs.clone())).unwrap(),
            first
        );

        fs::write(&inputs[1], b"changed input").unwrap();
        fs::remove_file(&inputs[2]).unwrap();
        let err = run_once(&out, info(args.clone(), inputs.clone())).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ShardError::Changed { finished: true, .. }),
            "{msg}"
        );
        assert!(
            msg.contains("0 files added, 1 removed, 1 modified")
                && msg.contains(&format!("removed {}", inputs[2].display()))
                && msg.contains(&format!("modified {}", inputs[1].display())),
            "{msg}"
        );
    }

    #[test]
    fn leftovers_of_a_killed_run_are_removed_by_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let args = serde_json::json!({});
        run_once(out, info(args.clone(), vec![])).unwrap();
        // Killed between the manifest and the clean-up, and a temporary shard
        // from a full disk; a file of the user's that ends in .tmp stays.
        fs::create_dir_all(out.join(PROGRESS_DIR)).unwrap();
        fs::write(out.join(PROGRESS_DIR).join("group-00000.json"), b"{}").unwrap();
        fs::write(out.join("shard-00001.parquet.tmp"), b"half").unwrap();
        fs::write(out.join("manifest.json.tmp"), b"half").unwrap();
        fs::write(out.join("notes.tmp"), b"mine").unwrap();
        run_once(out, info(args, vec![])).unwrap();
        assert!(!out.join(PROGRESS_DIR).exists());
        assert!(!out.join("shard-00001.parquet.tmp").exists());
        assert!(!out.join("manifest.json.tmp").exists());
        assert!(out.join("notes.tmp").exists());
    }

    #[test]
    fn an_output_path_that_is_a_file_is_one_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::write(&out, b"").unwrap();
        let err = run_once(&out, info(serde_json::json!({}), vec![])).unwrap_err();
        assert!(matches!(err, ShardError::NotAFolder { .. }), "{err}");
        assert!(std::error::Error::source(&err).is_none());
    }

    #[test]
    fn parts_cut_the_groups_into_contiguous_ranges_that_cover_them_once() {
        assert_eq!("2/3".parse::<Part>().unwrap(), Part::new(2, 3).unwrap());
        for bad in ["0/3", "4/3", "3", "a/b", "1/0", "-1/2"] {
            assert!(bad.parse::<Part>().is_err(), "{bad}");
        }
        for total in [0u64, 1, 2, 5, 7, 100] {
            for count in 1..=6u32 {
                let mut next = 0;
                for index in 1..=count {
                    let g = Part::new(index, count).unwrap().groups(total);
                    assert_eq!(g.start, next, "{index}/{count} of {total}");
                    assert!(g.end - g.start <= total.div_ceil(u64::from(count)));
                    next = g.end;
                }
                assert_eq!(next, total, "{count} parts of {total}");
            }
        }
    }

    #[test]
    fn a_part_writes_the_whole_runs_shards_of_its_groups() {
        let dir = tempfile::tempdir().unwrap();
        let args = serde_json::json!({});
        let whole = run_once(&dir.path().join("whole"), info(args.clone(), vec![])).unwrap();
        // 10 rows in groups of 4: groups 0, 1, 2; part 2/2 holds group 1 and 2,
        // and group 2 is all filtered or rejected.
        let opts = ShardOptions {
            part: Part::new(2, 2),
            ..opts()
        };
        let out = dir.path().join("part2");
        let m = run(
            &out,
            &opts,
            info(args, vec![]),
            planned(10),
            process,
            &ProgressBar::hidden(),
        )
        .unwrap();
        let p = m.part.clone().unwrap();
        assert_eq!((p.index, p.count, p.first_group, p.end_group), (2, 2, 1, 3));
        assert_eq!(m.shards, whole.shards[1..]);
        assert_eq!(m.counts.seen, 6);
        assert_eq!(
            fs::read(out.join(&m.shards[0].file)).unwrap(),
            fs::read(dir.path().join("whole").join(&m.shards[0].file)).unwrap()
        );
        // The same folder as another part is another run.
        let err = run(
            &out,
            &ShardOptions {
                part: Part::new(1, 2),
                ..opts
            },
            info(serde_json::json!({}), vec![]),
            planned(10),
            process,
            &ProgressBar::hidden(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("--part: was part 2/2, now part 1/2"),
            "{err}"
        );
    }

    #[test]
    fn strict_mode_stops_at_the_first_reject() {
        let dir = tempfile::tempdir().unwrap();
        let items: Vec<usize> = (0..10).collect();
        let strict = ShardOptions {
            strict: true,
            ..opts()
        };
        let err = write_shards(
            dir.path(),
            &strict,
            &serde_json::json!({}),
            &items,
            process,
            &ProgressBar::hidden(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("f4"), "{err}");
    }
}
