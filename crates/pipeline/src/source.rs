//! Opening shard folders, checking them against their manifests, and reading
//! the columns the loader needs, one row group at a time.
//!
//! A [`Source`] is one stream of rows: the paired folders (MIMIC-style, with
//! reports) or the unpaired ones (PadChest-style, images only), concatenated
//! in the order given. Rows are addressed by [`RowLoc`]: the shard's index in
//! that concatenation and the row inside the shard.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow_array::{Array, BinaryArray, Int8Array, Int32Array, ListArray, StringArray};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use rayon::prelude::*;
use schemas::{CHEXPERT_CLASSES, ImageEncoding, col};
use shards::Columns;

use crate::error::{PipelineError, io_err};

/// Whether a source's rows carry reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Image + report rows (MIMIC-CXR): tokens and entity masks are read.
    Paired,
    /// Image-only rows (PadChest, or MIMIC used without its reports).
    Unpaired,
}

/// How shards are checked when a source is opened.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenOptions {
    /// Hash every shard and compare with the manifest's sha256 (reads every
    /// byte once; shards are hashed in parallel). Footers and row counts are
    /// always checked.
    pub verify_sha256: bool,
    /// Keep only rows of this split (`train`, `validate`, `test`); `None` keeps all.
    pub split: Option<String>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            verify_sha256: true,
            split: Some("train".into()),
        }
    }
}

/// Where a row is: shard index within its [`Source`] and row within the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct RowLoc {
    /// Index of the shard in the source's concatenation of folders.
    pub shard: u32,
    /// Row inside the shard.
    pub row: u32,
}

/// One checked shard.
struct Shard {
    path: PathBuf,
    encoding: ImageEncoding,
    meta: ArrowReaderMetadata,
    /// First row of each row group, then the total: `rg_starts[i]..rg_starts[i+1]`.
    rg_starts: Vec<u32>,
    /// Rows kept by the split filter, ascending.
    kept: Vec<u32>,
}

/// The columns of one row group that the loader uses, already downcast.
pub(crate) struct RowGroup {
    pub path: PathBuf,
    pub encoding: ImageEncoding,
    /// Row index (in the shard) of this group's first row.
    pub first_row: u32,
    pub image: BinaryArray,
    pub height: Int32Array,
    pub width: Int32Array,
    pub tokens: Option<ListArray>,
    pub entity_mask: Option<ListArray>,
    pub labels: Vec<Int8Array>,
    pub subject_id: StringArray,
    pub study_id: StringArray,
    pub image_id: StringArray,
}

/// A stream of rows from one or more shard folders, checked against their
/// manifests, with a bounded cache of decoded row groups.
pub struct Source {
    kind: SourceKind,
    shards: Vec<Shard>,
    cache: Mutex<Lru>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("kind", &self.kind)
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl Source {
    /// Opens `dirs` (each an ingest output folder) as one stream, checking
    /// every shard: present, not truncated, footer readable, schema version
    /// and row count as the manifest says, sha256 when asked.
    pub fn open(
        kind: SourceKind,
        dirs: &[PathBuf],
        opts: &OpenOptions,
    ) -> Result<Source, PipelineError> {
        let mut jobs = Vec::new();
        for dir in dirs {
            let manifest = shards::read_manifest(dir)?;
            if kind == SourceKind::Paired && manifest.source != schemas::Source::Mimic {
                return Err(PipelineError::Config(format!(
                    "{}: a {} folder has no reports and cannot be a paired source",
                    dir.display(),
                    manifest.source.name()
                )));
            }
            for entry in &manifest.shards {
                jobs.push((
                    dir.join(&entry.file),
                    entry.clone(),
                    manifest.image_policy.encoding,
                ));
            }
        }
        // Shards are independent; checking them in parallel makes the sha256
        // pass run at disk speed rather than one core's hashing speed.
        let shards = jobs
            .par_iter()
            .map(|(path, entry, encoding)| open_shard(path, entry, *encoding, opts))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Source {
            kind,
            shards,
            cache: Mutex::new(Lru::new(8)),
        })
    }

    /// Paired or unpaired.
    pub fn kind(&self) -> SourceKind {
        self.kind
    }

    /// Rows kept by the split filter, over all shards.
    pub fn len(&self) -> u64 {
        self.shards.iter().map(|s| s.kept.len() as u64).sum()
    }

    /// True when no row is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps only the kept rows for which `keep(shard, row)` holds: a
    /// subset of a split, such as a fine-tuning label fraction.
    pub fn retain(&mut self, mut keep: impl FnMut(usize, u32) -> bool) {
        for (i, shard) in self.shards.iter_mut().enumerate() {
            shard.kept.retain(|&row| keep(i, row));
        }
    }

    /// Number of shards.
    pub fn num_shards(&self) -> usize {
        self.shards.len()
    }

    /// Kept rows of shard `i`, ascending.
    pub fn kept_rows(&self, shard: usize) -> &[u32] {
        &self.shards[shard].kept
    }

    /// The file of shard `i`.
    pub fn shard_path(&self, shard: usize) -> &Path {
        &self.shards[shard].path
    }

    /// Rows per row group of the first shard (the loader's reading unit).
    pub(crate) fn row_group_rows(&self) -> usize {
        self.shards
            .first()
            .and_then(|s| s.rg_starts.get(1).copied())
            .unwrap_or(256)
            .max(1) as usize
    }

    pub(crate) fn set_cache_capacity(&self, row_groups: usize) {
        self.cache.lock().expect("cache lock").capacity = row_groups.max(1);
    }

    /// The row group holding `loc`, from the cache or read from disk, and the
    /// row's index inside it.
    pub(crate) fn row_group(&self, loc: RowLoc) -> Result<(Arc<RowGroup>, usize), PipelineError> {
        let shard = &self.shards[loc.shard as usize];
        let rg = shard.rg_starts.partition_point(|&start| start <= loc.row) - 1;
        let key = (loc.shard, rg as u32);
        let offset = (loc.row - shard.rg_starts[rg]) as usize;
        if let Some(hit) = self.cache.lock().expect("cache lock").get(key) {
            return Ok((hit, offset));
        }
        // Read outside the lock: a slow read must not block another stage's
        // cache hit. Two stages racing for the same group both read it; the
        // data is the same, and the race is rare (replacement rows only).
        let group = Arc::new(read_row_group(shard, rg, self.kind)?);
        self.cache
            .lock()
            .expect("cache lock")
            .put(key, group.clone());
        Ok((group, offset))
    }
}

/// A shard checked by `shards::open_shard`, with the rows of the split kept.
fn open_shard(
    path: &Path,
    entry: &schemas::ShardEntry,
    encoding: ImageEncoding,
    opts: &OpenOptions,
) -> Result<Shard, PipelineError> {
    let shards::CheckedShard {
        file,
        meta,
        rg_starts,
        ..
    } = shards::open_shard(path, entry, opts.verify_sha256)?;
    let file_rows = entry.rows;
    let kept = match &opts.split {
        None => (0..file_rows as u32).collect(),
        Some(split) => {
            let mask = shards::projection(&meta, path, &[col::SPLIT])?;
            let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta.clone())
                .with_projection(mask)
                .build()
                .map_err(|e| PipelineError::Read {
                    path: path.to_path_buf(),
                    row_group: 0,
                    message: e.to_string(),
                })?;
            let mut kept = Vec::new();
            let mut row = 0u32;
            for batch in reader {
                let batch = batch.map_err(|e| PipelineError::Read {
                    path: path.to_path_buf(),
                    row_group: 0,
                    message: e.to_string(),
                })?;
                let splits = Columns::new(&batch, path).strings(col::SPLIT)?;
                for i in 0..splits.len() {
                    if splits.value(i) == split {
                        kept.push(row);
                    }
                    row += 1;
                }
            }
            kept
        }
    };
    Ok(Shard {
        path: path.to_path_buf(),
        encoding,
        meta,
        rg_starts,
        kept,
    })
}

/// Reads one row group, only the columns the loader uses.
fn read_row_group(shard: &Shard, rg: usize, kind: SourceKind) -> Result<RowGroup, PipelineError> {
    let path = &shard.path;
    let labels: Vec<String> = (0..CHEXPERT_CLASSES.len())
        .map(schemas::label_column)
        .collect();
    let mut names = vec![
        col::IMAGE,
        col::IMAGE_HEIGHT,
        col::IMAGE_WIDTH,
        col::SUBJECT_ID,
        col::STUDY_ID,
        col::IMAGE_ID,
    ];
    if kind == SourceKind::Paired {
        names.extend([col::TOKEN_IDS, col::ENTITY_MASK]);
    }
    names.extend(labels.iter().map(String::as_str));
    let read_err = |message: String| PipelineError::Read {
        path: path.clone(),
        row_group: rg,
        message,
    };
    let mask = shards::projection(&shard.meta, path, &names)?;
    let file = File::open(path).map_err(io_err(path))?;
    let rows = (shard.rg_starts[rg + 1] - shard.rg_starts[rg]) as usize;
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, shard.meta.clone())
        .with_projection(mask)
        .with_row_groups(vec![rg])
        .with_batch_size(rows.max(1))
        .build()
        .map_err(|e| read_err(e.to_string()))?;
    let mut batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(e.to_string()))?;
    // The batch size is the group's row count, so the reader yields one batch.
    if batches.len() != 1 {
        return Err(read_err(format!(
            "expected one record batch, read {}",
            batches.len()
        )));
    }
    let batch = batches.pop().expect("one batch");
    if batch.num_rows() != rows {
        return Err(read_err(format!(
            "read {} rows, footer says {rows}",
            batch.num_rows()
        )));
    }
    let c = Columns::new(&batch, path);
    let (tokens, entity_mask) = match kind {
        SourceKind::Paired => (Some(c.token_ids()?.clone()), Some(c.entity_mask()?.clone())),
        SourceKind::Unpaired => (None, None),
    };
    Ok(RowGroup {
        path: path.clone(),
        encoding: shard.encoding,
        first_row: shard.rg_starts[rg],
        image: c.image()?.clone(),
        height: c.ints(col::IMAGE_HEIGHT)?.clone(),
        width: c.ints(col::IMAGE_WIDTH)?.clone(),
        tokens,
        entity_mask,
        labels: c.labels()?.into_iter().cloned().collect(),
        subject_id: c.strings(col::SUBJECT_ID)?.clone(),
        study_id: c.strings(col::STUDY_ID)?.clone(),
        image_id: c.strings(col::IMAGE_ID)?.clone(),
    })
}

/// A small least-recently-used map of row groups. Capacity is a handful of
/// groups (the shuffle window's span), so a linear scan beats a linked map.
struct Lru {
    capacity: usize,
    tick: u64,
    map: HashMap<(u32, u32), (u64, Arc<RowGroup>)>,
}

impl Lru {
    fn new(capacity: usize) -> Lru {
        Lru {
            capacity,
            tick: 0,
            map: HashMap::new(),
        }
    }

    fn get(&mut self, key: (u32, u32)) -> Option<Arc<RowGroup>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(&key).map(|(t, v)| {
            *t = tick;
            v.clone()
        })
    }

    fn put(&mut self, key: (u32, u32), value: Arc<RowGroup>) {
        self.tick += 1;
        while self.map.len() >= self.capacity && !self.map.contains_key(&key) {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| *k)
                .expect("non-empty");
            self.map.remove(&oldest);
        }
        self.map.insert(key, (self.tick, value));
    }
}

/// The two streams a loader mixes: paired and unpaired rows.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Image + report rows, if any.
    pub paired: Option<Arc<Source>>,
    /// Image-only rows, if any.
    pub unpaired: Option<Arc<Source>>,
}

impl Sources {
    /// Opens the paired and unpaired folders (either list may be empty).
    pub fn open(
        paired: &[PathBuf],
        unpaired: &[PathBuf],
        opts: &OpenOptions,
    ) -> Result<Sources, PipelineError> {
        let open = |kind, dirs: &[PathBuf]| -> Result<Option<Arc<Source>>, PipelineError> {
            if dirs.is_empty() {
                Ok(None)
            } else {
                Source::open(kind, dirs, opts).map(|s| Some(Arc::new(s)))
            }
        };
        Ok(Sources {
            paired: open(SourceKind::Paired, paired)?,
            unpaired: open(SourceKind::Unpaired, unpaired)?,
        })
    }
}
