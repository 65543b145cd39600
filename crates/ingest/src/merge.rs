//! `ingest merge`: the part folders of a partitioned run (`--part I/N`)
//! combined into the folder a whole run would have written.
//!
//! A part writes the whole run's shards of its contiguous groups, under the
//! whole run's names (see [`crate::shard::Part`]), so merging places the
//! parts' shards side by side (hard links where the filesystem allows, else
//! copies), adds up the counts, concatenates the reject logs in part order
//! and writes the whole run's fingerprint and manifest. The output is then
//! byte for byte the folder of a whole run: same shards, same
//! `rejects.jsonl`, same `manifest.json`, same `fingerprint.json.gz` (so
//! `ingest` run again on it as a whole run sees a finished run).
//!
//! Before writing anything the parts are checked: each finished, all of one
//! run (the same arguments, tokenizer and sidecar, inputs, plan and tool
//! version; a difference is named), and together covering every part `1..=N`
//! exactly once. The output folder is bound to the merged fingerprint first
//! and its manifest is written last, so a killed merge is simply run again.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use schemas::{
    FINGERPRINT_FILE, MANIFEST_FILE, Manifest, PartInfo, REJECTS_FILE, Reject, ShardEntry,
};

use crate::shard::{
    Fingerprint, ShardError, argument_changes, finish, io_err, remove_stale, sha256_file,
    temporary_path, write_atomic,
};

/// Why the parts could not be merged. Each names the folder or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// No part folders were given.
    #[error("no part folders given (--parts DIR …)")]
    NoParts,
    /// A part folder has no manifest: its run has not finished.
    #[error(
        "{}: no manifest.json: this part has not finished (run its `ingest … --part` again; it resumes)",
        dir.display()
    )]
    Unfinished {
        /// The part folder.
        dir: PathBuf,
    },
    /// A file of a part folder is unreadable or not what it should be.
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A folder is a whole run, not a part.
    #[error(
        "{}: not a part of a partitioned run (its manifest has no `part`; it was made without --part)",
        dir.display()
    )]
    NotAPart {
        /// The folder.
        dir: PathBuf,
    },
    /// Two folders hold the same part.
    #[error("part {index}/{count} given twice: {} and {}", first.display(), second.display())]
    DuplicatePart {
        /// The part number.
        index: u32,
        /// The number of parts.
        count: u32,
        /// The first folder holding it.
        first: PathBuf,
        /// The second.
        second: PathBuf,
    },
    /// Parts of the run are missing.
    #[error("parts missing: {} of {count} (given: {given})", missing.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "))]
    MissingParts {
        /// The missing part numbers.
        missing: Vec<u32>,
        /// The number of parts.
        count: u32,
        /// The folders given, with their part numbers.
        given: String,
    },
    /// A part was made by a different run than the first part given.
    #[error(
        "{} (part {part}) and {} (part {first_part}) are not parts of one run: {change}",
        dir.display(),
        first.display()
    )]
    DifferentRun {
        /// The folder that differs.
        dir: PathBuf,
        /// Its part, as `I/N`.
        part: String,
        /// The first folder given.
        first: PathBuf,
        /// Its part, as `I/N`.
        first_part: String,
        /// What differs, naming each argument with both values.
        change: String,
    },
    /// The output folder holds something else.
    #[error("{}: {reason}", out.display())]
    BadOutput {
        /// The output folder.
        out: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// Writing the output failed.
    #[error(transparent)]
    Write(#[from] ShardError),
}

/// One part folder, read and checked on its own.
struct PartFolder {
    dir: PathBuf,
    manifest: Manifest,
    part: PartInfo,
    fingerprint: Fingerprint,
    rejects: Vec<Reject>,
}

impl PartFolder {
    fn label(&self) -> String {
        format!("{}/{}", self.part.index, self.part.count)
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> MergeError {
    MergeError::BadFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_part(dir: &Path) -> Result<PartFolder, MergeError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest = shards::read_manifest(dir).map_err(|e| match e {
        shards::ShardsError::MissingManifest { .. } => MergeError::Unfinished {
            dir: dir.to_path_buf(),
        },
        shards::ShardsError::BadManifest { source, .. } => {
            bad(&manifest_path, format!("not a manifest: {source}"))
        }
        other => bad(&manifest_path, other.reason()),
    })?;
    let Some(part) = manifest.part.clone() else {
        return Err(MergeError::NotAPart {
            dir: dir.to_path_buf(),
        });
    };
    let fp_path = dir.join(FINGERPRINT_FILE);
    let fingerprint = fs::read(&fp_path)
        .map_err(|e| bad(&fp_path, e.to_string()))
        .and_then(|b| {
            Fingerprint::from_gzip(&b).ok_or_else(|| bad(&fp_path, "not an ingest fingerprint"))
        })?;
    if fingerprint.part.map(|p| (p.index(), p.count())) != Some((part.index, part.count)) {
        return Err(bad(
            &fp_path,
            format!(
                "names another part than manifest.json ({}/{})",
                part.index, part.count
            ),
        ));
    }
    if part.index == 0
        || part.index > part.count
        || part.first_group > part.end_group
        || part.end_group > part.total_groups
    {
        return Err(bad(&manifest_path, format!("impossible part {part:?}")));
    }
    let rejects_path = dir.join(REJECTS_FILE);
    let text = fs::read_to_string(&rejects_path).map_err(|e| bad(&rejects_path, e.to_string()))?;
    let rejects = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str::<Reject>(line)
                .map_err(|e| bad(&rejects_path, format!("line {}: {e}", i + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if rejects.len() as u64 != manifest.counts.rejected_total() {
        return Err(bad(
            &rejects_path,
            format!(
                "{} rejects listed, manifest.json counts {}",
                rejects.len(),
                manifest.counts.rejected_total()
            ),
        ));
    }
    for shard in &manifest.shards {
        let in_range = shard_index(&shard.file)
            .is_some_and(|g| (part.first_group..part.end_group).contains(&g));
        if !in_range {
            return Err(bad(
                &manifest_path,
                format!(
                    "shard {} is outside this part's groups {}..{}",
                    shard.file, part.first_group, part.end_group
                ),
            ));
        }
        let path = dir.join(&shard.file);
        let sha = sha256_file(&path).map_err(|e| bad(&path, e.to_string()))?;
        if sha != shard.sha256 {
            return Err(bad(
                &path,
                format!(
                    "sha256 {sha} differs from manifest.json's {}: the shard changed since its part finished",
                    shard.sha256
                ),
            ));
        }
    }
    Ok(PartFolder {
        dir: dir.to_path_buf(),
        manifest,
        part,
        fingerprint,
        rejects,
    })
}

/// `shard-00042.parquet` → 42.
fn shard_index(file: &str) -> Option<u64> {
    file.strip_prefix("shard-")?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
}

/// The manifest's description of the run (everything but the counts, the
/// shards and the part) as JSON, to compare two parts field by field.
fn run_description(m: &Manifest) -> serde_json::Value {
    let mut v = serde_json::to_value(m).expect("serialisable");
    if let Some(obj) = v.as_object_mut() {
        for key in ["counts", "shards", "part"] {
            obj.remove(key);
        }
    }
    v
}

/// Checks that `folders` are the parts of one run, each once and all of
/// them; returns them in part order.
fn check_parts(mut folders: Vec<PartFolder>) -> Result<Vec<PartFolder>, MergeError> {
    let first = folders.first().ok_or(MergeError::NoParts)?;
    let whole = |p: &PartFolder| Fingerprint {
        part: None,
        ..p.fingerprint.clone()
    };
    let (first_fp, first_run) = (whole(first), run_description(&first.manifest));
    for f in &folders[1..] {
        let mut changes = Vec::new();
        if f.part.count != first.part.count {
            changes.push(format!(
                "--part: split into {} parts, not {}",
                f.part.count, first.part.count
            ));
        }
        if let Some(c) = first_fp.changes(&whole(f)) {
            changes.push(c);
        }
        let mut fields = Vec::new();
        argument_changes("", &first_run, &run_description(&f.manifest), &mut fields);
        // The fingerprint names most of these already, as arguments.
        changes.extend(
            fields
                .into_iter()
                .map(|c| c.replacen("argument `", "manifest field `", 1))
                .filter(|c| !c.starts_with("manifest field `arguments.")),
        );
        for (name, a, b) in [
            (
                "planned rows",
                first.part.planned_rows.to_string(),
                f.part.planned_rows.to_string(),
            ),
            (
                "plan sha256",
                first.part.plan_sha256.clone(),
                f.part.plan_sha256.clone(),
            ),
            (
                "groups",
                first.part.total_groups.to_string(),
                f.part.total_groups.to_string(),
            ),
        ] {
            if a != b && !changes.iter().any(|c| c.contains("plan")) {
                changes.push(format!("{name}: {b}, not {a}"));
            }
        }
        if !changes.is_empty() {
            return Err(MergeError::DifferentRun {
                dir: f.dir.clone(),
                part: f.label(),
                first: first.dir.clone(),
                first_part: first.label(),
                change: changes.join("; "),
            });
        }
    }
    let count = first.part.count;
    let mut by_index: BTreeMap<u32, &PartFolder> = BTreeMap::new();
    for f in &folders {
        if let Some(other) = by_index.insert(f.part.index, f) {
            return Err(MergeError::DuplicatePart {
                index: f.part.index,
                count,
                first: other.dir.clone(),
                second: f.dir.clone(),
            });
        }
    }
    let missing: Vec<u32> = (1..=count).filter(|i| !by_index.contains_key(i)).collect();
    if !missing.is_empty() {
        let given = by_index
            .values()
            .map(|f| format!("{} = {}", f.label(), f.dir.display()))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(MergeError::MissingParts {
            missing,
            count,
            given,
        });
    }
    folders.sort_by_key(|f| f.part.index);
    // Each part's groups follow the previous part's, from 0 to the end.
    let mut next = 0;
    for f in &folders {
        let expected = crate::shard::Part::new(f.part.index, count)
            .expect("checked above")
            .groups(f.part.total_groups);
        if f.part.first_group != next || (f.part.first_group..f.part.end_group) != expected {
            return Err(bad(
                &f.dir.join(MANIFEST_FILE),
                format!(
                    "part {} holds groups {}..{}, expected {}..{} of {}",
                    f.label(),
                    f.part.first_group,
                    f.part.end_group,
                    expected.start,
                    expected.end,
                    f.part.total_groups
                ),
            ));
        }
        next = f.part.end_group;
    }
    Ok(folders)
}

/// Places `src` at `dest` whole: a hard link (no copy of the data) or, across
/// filesystems, a copy; through a temporary name, so `dest` is either absent
/// or complete. A `dest` that already holds the shard is kept.
fn place_shard(src: &Path, dest: &Path, shard: &ShardEntry) -> Result<(), MergeError> {
    if dest.is_file() && sha256_file(dest).is_ok_and(|s| s == shard.sha256) {
        return Ok(());
    }
    let tmp = temporary_path(dest);
    if tmp.exists() {
        fs::remove_file(&tmp).map_err(io_err(&tmp))?;
    }
    if fs::hard_link(src, &tmp).is_err() {
        fs::copy(src, &tmp).map_err(io_err(&tmp))?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp))?;
        let sha = sha256_file(&tmp).map_err(io_err(&tmp))?;
        if sha != shard.sha256 {
            return Err(bad(
                src,
                format!("copied with sha256 {sha}, expected {}", shard.sha256),
            ));
        }
    }
    fs::rename(&tmp, dest).map_err(io_err(dest))?;
    Ok(())
}

/// Merges the part folders `parts` into `out`; returns the manifest written.
///
/// The result is the folder a whole run (without `--part`) would have
/// written, byte for byte. A finished merge run again is a no-op, an
/// interrupted one completes; an `out` bound to another run is refused.
pub fn merge(parts: &[PathBuf], out: &Path) -> Result<Manifest, MergeError> {
    if parts.is_empty() {
        return Err(MergeError::NoParts);
    }
    if out.exists() && !out.is_dir() {
        return Err(MergeError::BadOutput {
            out: out.to_path_buf(),
            reason: "exists and is not a folder".into(),
        });
    }
    let same_file = |a: &Path, b: &Path| match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if let Some(p) = parts.iter().find(|p| same_file(p, out)) {
        return Err(MergeError::BadOutput {
            out: out.to_path_buf(),
            reason: format!("is one of the parts ({}); give another --out", p.display()),
        });
    }
    let folders = parts
        .iter()
        .map(|d| read_part(d))
        .collect::<Result<Vec<_>, _>>()?;
    let folders = check_parts(folders)?;

    let fingerprint = Fingerprint {
        part: None,
        ..folders[0].fingerprint.clone()
    };
    let mut manifest = Manifest {
        counts: Default::default(),
        shards: Vec::new(),
        part: None,
        ..folders[0].manifest.clone()
    };
    let mut rejects = Vec::new();
    for f in &folders {
        manifest.counts.add(&f.manifest.counts);
        manifest.shards.extend(f.manifest.shards.iter().cloned());
        rejects.extend(f.rejects.iter().cloned());
    }
    let shard_rows: u64 = manifest.shards.iter().map(|s| s.rows).sum();
    if !manifest.counts.reconciles() || shard_rows != manifest.counts.written {
        return Err(MergeError::BadOutput {
            out: out.to_path_buf(),
            reason: format!(
                "the parts' counts do not add up (seen {}, written {} in shards of {} rows, filtered {}, rejected {}); a part's manifest.json was edited",
                manifest.counts.seen,
                manifest.counts.written,
                shard_rows,
                manifest.counts.filtered,
                manifest.counts.rejected_total()
            ),
        });
    }

    // Bind the output to the whole run before writing into it.
    fs::create_dir_all(out).map_err(io_err(out))?;
    let fp_path = out.join(FINGERPRINT_FILE);
    match fs::read(&fp_path) {
        Ok(bytes) => {
            let Some(before) = Fingerprint::from_gzip(&bytes) else {
                return Err(MergeError::BadOutput {
                    out: out.to_path_buf(),
                    reason: format!("{FINGERPRINT_FILE} is unreadable; give an empty --out folder"),
                });
            };
            if let Some(change) = before.changes(&fingerprint) {
                return Err(MergeError::BadOutput {
                    out: out.to_path_buf(),
                    reason: format!(
                        "holds a run made from different arguments or inputs: {change}; use another --out folder or remove this one"
                    ),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if out.join(MANIFEST_FILE).exists() {
                return Err(MergeError::BadOutput {
                    out: out.to_path_buf(),
                    reason: "holds a finished run with no fingerprint; give another --out folder"
                        .into(),
                });
            }
            write_atomic(&fp_path, &fingerprint.to_gzip())?;
        }
        Err(source) => {
            return Err(ShardError::Io {
                path: fp_path,
                source,
            }
            .into());
        }
    }
    remove_stale(out, false)?;
    for f in &folders {
        for shard in &f.manifest.shards {
            place_shard(&f.dir.join(&shard.file), &out.join(&shard.file), shard)?;
        }
    }
    finish(out, &manifest, &rejects)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::{Outcome, Part, Planned, Row, RunInfo, ShardOptions, run};
    use indicatif::ProgressBar;
    use schemas::{ImagePolicy, Source, Stage};

    fn process(i: &usize) -> Outcome {
        match i % 7 {
            3 => Outcome::Filtered,
            5 => Outcome::Rejected(Box::new(Reject {
                path: format!("f{i}"),
                subject_id: None,
                study_id: None,
                image_id: None,
                stage: Stage::ImageDecode,
                reason: "bad".into(),
            })),
            _ => Outcome::Row(Box::new(Row {
                source: "mimic".into(),
                study_id: format!("s{i}"),
                image: vec![*i as u8; 16],
                image_height: 4,
                image_width: 4,
                ..Default::default()
            })),
        }
    }

    /// Runs the toy source (23 rows and a reject found while planning) into
    /// `out`, whole or as one part.
    fn toy(out: &Path, part: Option<Part>, short_side: u32) -> Manifest {
        let planned = Planned {
            items: (0..23).collect::<Vec<usize>>(),
            rejects: vec![Reject {
                path: "index.csv".into(),
                subject_id: None,
                study_id: None,
                image_id: None,
                stage: Stage::Csv,
                reason: "unparsable".into(),
            }],
            seen: 24,
        };
        let info = RunInfo {
            source: Source::Mimic,
            arguments: serde_json::json!({"image": {"short_side": short_side}}),
            image_policy: ImagePolicy::default(),
            tokenizer: None,
            entities: None,
            inputs: Vec::new(),
        };
        let opts = ShardOptions {
            rows_per_shard: 3,
            row_group_rows: 2,
            part,
            ..Default::default()
        };
        run(out, &opts, info, planned, process, &ProgressBar::hidden()).unwrap()
    }

    fn folder(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, fs::read(&p).unwrap())
            })
            .collect()
    }

    fn parts(dir: &Path, count: u32) -> Vec<PathBuf> {
        (1..=count)
            .map(|i| {
                let d = dir.join(format!("part{i}of{count}"));
                toy(&d, Part::new(i, count), 64);
                d
            })
            .collect()
    }

    #[test]
    fn merged_parts_are_the_whole_runs_folder_byte_for_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let whole = tmp.path().join("whole");
        let m = toy(&whole, None, 64);
        assert!(m.counts.rejected_total() >= 2 && m.counts.filtered >= 1);
        for count in [1, 2, 3, 5, 9] {
            let mut dirs = parts(tmp.path(), count);
            // Given in any order.
            dirs.reverse();
            let out = tmp.path().join(format!("merged{count}"));
            assert_eq!(merge(&dirs, &out).unwrap(), m, "{count} parts");
            assert_eq!(folder(&out), folder(&whole), "{count} parts");
            // Again: a no-op with the same result.
            assert_eq!(merge(&dirs, &out).unwrap(), m);
            assert_eq!(folder(&out), folder(&whole), "{count} parts, again");
        }
    }

    #[test]
    fn a_killed_merge_completes_when_run_again() {
        let tmp = tempfile::tempdir().unwrap();
        let whole = tmp.path().join("whole");
        toy(&whole, None, 64);
        let dirs = parts(tmp.path(), 2);
        let out = tmp.path().join("merged");
        merge(&dirs, &out).unwrap();
        // As if killed after placing one shard, another half copied.
        fs::remove_file(out.join(MANIFEST_FILE)).unwrap();
        fs::remove_file(out.join(REJECTS_FILE)).unwrap();
        fs::remove_file(out.join("shard-00001.parquet")).unwrap();
        // A different file under a shard's name (a new file: the merged
        // shards are hard links to the parts', never written in place).
        fs::remove_file(out.join("shard-00002.parquet")).unwrap();
        fs::write(out.join("shard-00002.parquet"), b"other").unwrap();
        fs::write(out.join("shard-00003.parquet.tmp"), b"half").unwrap();
        merge(&dirs, &out).unwrap();
        assert_eq!(folder(&out), folder(&whole));
    }

    #[test]
    fn refuses_missing_duplicate_and_foreign_parts_naming_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = parts(tmp.path(), 3);
        let out = tmp.path().join("merged");

        let err = merge(&[dirs[0].clone(), dirs[2].clone()], &out).unwrap_err();
        assert!(
            matches!(&err, MergeError::MissingParts { missing, count: 3, .. } if missing == &[2]),
            "{err}"
        );
        assert!(err.to_string().contains("parts missing: 2 of 3"), "{err}");

        let twice = tmp.path().join("again2");
        toy(&twice, Part::new(2, 3), 64);
        let err = merge(&[dirs[0].clone(), dirs[1].clone(), twice.clone()], &out).unwrap_err();
        assert!(
            matches!(
                &err,
                MergeError::DuplicatePart {
                    index: 2,
                    count: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains(&twice.display().to_string()),
            "{err}"
        );

        let other = tmp.path().join("other3");
        toy(&other, Part::new(3, 3), 96);
        let err = merge(&[dirs[0].clone(), dirs[1].clone(), other.clone()], &out).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, MergeError::DifferentRun { .. }), "{msg}");
        assert!(
            msg.contains("argument `image.short_side` was 64, now 96")
                && msg.contains(&other.display().to_string()),
            "{msg}"
        );

        let split2 = tmp.path().join("split2");
        toy(&split2, Part::new(2, 2), 64);
        let err = merge(&[dirs[0].clone(), split2], &out).unwrap_err();
        assert!(
            err.to_string().contains("split into 2 parts, not 3"),
            "{err}"
        );

        let whole = tmp.path().join("whole");
        toy(&whole, None, 64);
        let err = merge(&[whole], &out).unwrap_err();
        assert!(matches!(err, MergeError::NotAPart { .. }), "{err}");

        fs::remove_file(dirs[1].join(MANIFEST_FILE)).unwrap();
        let err = merge(&dirs, &out).unwrap_err();
        assert!(matches!(err, MergeError::Unfinished { .. }), "{err}");
        // Nothing was written for any refused merge.
        assert!(!out.exists());
    }

    #[test]
    fn a_changed_part_shard_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = parts(tmp.path(), 2);
        let m = toy(&dirs[1], Part::new(2, 2), 64);
        fs::write(dirs[1].join(&m.shards[0].file), b"changed").unwrap();
        let err = merge(&dirs, &tmp.path().join("merged")).unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");
    }

    #[test]
    fn shard_names_give_their_group() {
        assert_eq!(shard_index("shard-00042.parquet"), Some(42));
        assert_eq!(shard_index("shard-x.parquet"), None);
        assert_eq!(shard_index("manifest.json"), None);
    }
}
