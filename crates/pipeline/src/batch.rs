//! The batch the trainer receives, and the two stages that make it: `read`
//! (order → row groups) and `decode` (images → floats, text → padded ids).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::Int32Type;
use rayon::prelude::*;
use schemas::LABEL_MISSING;

use crate::augment::{self, AugmentConfig, IMAGE_FLOATS, Mode};
use crate::config::{BadRowPolicy, LoaderConfig};
use crate::error::{BadRow, PipelineError};
use crate::order::{Order, Position, SampleRef};
use crate::source::{RowGroup, RowLoc, SourceKind, Sources};
use crate::stats::Counters;

/// Width of a batch's token rows: the shard format's context length
/// ([`schemas::CONTEXT_LENGTH`]), under the name the batch shapes use.
pub const CONTEXT: usize = schemas::CONTEXT_LENGTH;
/// Label columns: the 14 CheXpert classes, in [`schemas::CHEXPERT_CLASSES`] order.
pub const NUM_LABELS: usize = schemas::CHEXPERT_CLASSES.len();

/// Where a batch row came from, for tracing: source, shard, row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct RowId {
    /// Paired or unpaired stream.
    pub source: SourceKind,
    /// Shard and row within the stream (see [`crate::Source::shard_path`]).
    pub loc: RowLoc,
}

/// One batch for this rank, as plain contiguous row-major buffers that a
/// trainer wraps as tensors without copying. Rows `0..paired_rows` are
/// paired (with text), the rest unpaired.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Where in training this batch is.
    pub position: Position,
    /// Rows in the batch (this rank's share of the global batch).
    pub size: usize,
    /// Leading rows that are paired.
    pub paired_rows: usize,
    /// `[size, 3, 224, 224]`, CLIP-normalised.
    pub images: Vec<f32>,
    /// `[size, 77]` token ids, zero-padded (zeros for unpaired rows).
    pub tokens: Vec<i64>,
    /// `[size]` number of real tokens (0 for unpaired rows).
    pub token_lengths: Vec<i64>,
    /// `[size, 77]` 1 where the token overlaps a medical entity.
    pub entity_mask: Vec<u8>,
    /// `[size]` 1 for paired rows.
    pub paired: Vec<u8>,
    /// `[size, 14]` CheXpert labels; [`LABEL_MISSING`] where not mentioned.
    pub labels: Vec<i8>,
    /// `[size]` where each row came from.
    pub rows: Vec<RowId>,
    /// Rows whose image did not decode and were replaced in this batch.
    pub skipped: Vec<BadRow>,
    /// Passes done over each source at this batch (e.g. paired 2.5 = halfway
    /// through epoch 2; the unpaired stream cycles at its own rate).
    pub progress: Vec<(SourceKind, f64)>,
}

impl Batch {
    /// Shape of [`Batch::images`].
    pub fn images_shape(&self) -> [usize; 4] {
        [
            self.size,
            augment::CHANNELS,
            augment::IMAGE_SIZE,
            augment::IMAGE_SIZE,
        ]
    }

    /// Shape of [`Batch::tokens`] and [`Batch::entity_mask`].
    pub fn tokens_shape(&self) -> [usize; 2] {
        [self.size, CONTEXT]
    }

    /// Image `i`, `[3, 224, 224]`.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.images[i * IMAGE_FLOATS..(i + 1) * IMAGE_FLOATS]
    }
}

/// One sample with its row group in hand.
pub(crate) struct RawSample {
    sample: SampleRef,
    group: Arc<RowGroup>,
    offset: usize,
}

/// What the read stage hands the decode stage.
pub(crate) struct RawBatch {
    pos: Position,
    samples: Vec<RawSample>,
}

/// The order, the sources and the decode pool: everything needed to make
/// the batch at a position. Both stages are methods; the prefetcher only
/// decides which thread calls them.
pub(crate) struct Maker {
    pub order: Order,
    sources: Sources,
    mode: Mode,
    augment: AugmentConfig,
    policy: BadRowPolicy,
    max_replacements: usize,
    pool: rayon::ThreadPool,
    pub counters: Arc<Counters>,
}

impl Maker {
    pub fn new(sources: Sources, cfg: &LoaderConfig) -> Result<Maker, PipelineError> {
        let bad = |m: String| Err(PipelineError::Config(m));
        if cfg.world_size == 0 || cfg.rank >= cfg.world_size {
            return bad(format!(
                "rank {} of world size {}",
                cfg.rank, cfg.world_size
            ));
        }
        let (p, u) = cfg.mix();
        if p % cfg.world_size != 0 || u % cfg.world_size != 0 {
            return bad(format!(
                "{p} paired and {u} unpaired rows per batch do not split over {} ranks",
                cfg.world_size
            ));
        }
        let pick = |s: &Option<Arc<crate::Source>>, n: usize, what: &str| match (s, n) {
            (_, 0) => Ok(None),
            (Some(s), n) => Ok(Some((s.clone(), n))),
            (None, n) => Err(PipelineError::Config(format!(
                "the mix asks {n} {what} rows per batch but no {what} folder was given"
            ))),
        };
        let order = Order::new(
            cfg.seed,
            cfg.shuffle,
            cfg.shuffle_window,
            cfg.world_size,
            cfg.rank,
            pick(&sources.paired, p, "paired")?,
            pick(&sources.unpaired, u, "unpaired")?,
            cfg.keep_last_partial,
        )
        .map_err(PipelineError::Config)?;
        for (source, _) in order.streams() {
            // A batch touches at most two windows' row groups, plus the
            // groups straddling their edges.
            let derived = 2 * cfg.shuffle_window.div_ceil(source.row_group_rows()) + 4;
            source.set_cache_capacity(cfg.cache_row_groups.unwrap_or(derived));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads.max(1))
            .thread_name(|i| format!("pipeline-decode-{i}"))
            .build()
            .map_err(|e| PipelineError::Config(format!("decode pool: {e}")))?;
        Ok(Maker {
            order,
            sources,
            mode: cfg.mode,
            augment: cfg.augment.clone(),
            policy: cfg.bad_rows,
            max_replacements: cfg.max_replacements,
            pool,
            counters: Arc::new(Counters::default()),
        })
    }

    fn source(&self, kind: SourceKind) -> &Arc<crate::Source> {
        match kind {
            SourceKind::Paired => self.sources.paired.as_ref(),
            SourceKind::Unpaired => self.sources.unpaired.as_ref(),
        }
        .expect("the order only names opened sources")
    }

    /// Stage 1: the samples at `pos` with their row groups read.
    pub fn read(&self, pos: Position) -> Result<RawBatch, PipelineError> {
        let start = Instant::now();
        let samples = self
            .order
            .batch(pos)
            .into_iter()
            .map(|sample| {
                let (group, offset) = self.source(sample.kind).row_group(sample.loc)?;
                Ok(RawSample {
                    sample,
                    group,
                    offset,
                })
            })
            .collect::<Result<Vec<_>, PipelineError>>()?;
        Counters::add(&self.counters.read_nanos, start.elapsed().as_nanos());
        Ok(RawBatch { pos, samples })
    }

    /// Stage 2: images decoded and augmented on the pool, text and labels
    /// copied, bad rows replaced or reported. `reuse` is a spent batch whose
    /// buffers are refilled instead of allocated.
    pub fn decode(&self, raw: RawBatch, reuse: Option<Batch>) -> Result<Batch, PipelineError> {
        let start = Instant::now();
        let RawBatch { pos, mut samples } = raw;
        let n = samples.len();
        let mut batch = reuse.unwrap_or_default();
        batch.images.resize(n * IMAGE_FLOATS, 0.0);
        batch.images.truncate(n * IMAGE_FLOATS);
        let (mode, augment) = (self.mode, &self.augment);
        // Each image writes its own disjoint chunk: no locks, and the result
        // does not depend on which thread ran it (its randomness comes from
        // the sample's key).
        let results: Vec<Result<(), String>> = self.pool.install(|| {
            batch
                .images
                .par_chunks_mut(IMAGE_FLOATS)
                .zip(samples.par_iter())
                .map(|(out, s)| {
                    render_row(&s.group, s.offset, mode, augment, s.sample.augment_key, out)
                })
                .collect()
        });
        batch.skipped.clear();
        for (i, result) in results.into_iter().enumerate() {
            let Err(mut reason) = result else { continue };
            let mut attempt = 0;
            loop {
                let bad = bad_row(&samples[i], reason);
                if self.policy == BadRowPolicy::Fail {
                    return Err(PipelineError::BadRow(Box::new(bad)));
                }
                self.counters.bad_rows.fetch_add(1, Relaxed);
                batch.skipped.push(bad);
                attempt += 1;
                if attempt > self.max_replacements {
                    let last = batch.skipped.pop().expect("just pushed");
                    return Err(PipelineError::TooManyBadRows {
                        tried: attempt,
                        last: Box::new(last),
                    });
                }
                let loc = self
                    .order
                    .replacement(pos, &samples[i].sample, attempt as u64);
                let (group, offset) = self.source(samples[i].sample.kind).row_group(loc)?;
                samples[i] = RawSample {
                    sample: SampleRef {
                        loc,
                        ..samples[i].sample
                    },
                    group,
                    offset,
                };
                let s = &samples[i];
                let out = &mut batch.images[i * IMAGE_FLOATS..(i + 1) * IMAGE_FLOATS];
                match render_row(&s.group, s.offset, mode, augment, s.sample.augment_key, out) {
                    Ok(()) => break,
                    Err(r) => reason = r,
                }
            }
        }
        fill_rows(&mut batch, &samples);
        batch.position = pos;
        batch.size = n;
        batch.paired_rows = samples
            .iter()
            .filter(|s| s.sample.kind == SourceKind::Paired)
            .count();
        batch.progress = self.order.cycles_done(pos);
        self.counters.samples.fetch_add(n as u64, Relaxed);
        Counters::add(&self.counters.decode_nanos, start.elapsed().as_nanos());
        Ok(batch)
    }
}

fn bad_row(s: &RawSample, reason: String) -> BadRow {
    let g = &s.group;
    BadRow {
        path: g.path.clone(),
        row: g.first_row + s.offset as u32,
        subject_id: g.subject_id.value(s.offset).to_string(),
        study_id: g.study_id.value(s.offset).to_string(),
        image_id: g.image_id.value(s.offset).to_string(),
        reason,
    }
}

/// The stored 8-bit pixels of a row, borrowed when stored raw.
fn pixels(g: &RowGroup, i: usize) -> Result<(Cow<'_, [u8]>, usize, usize), String> {
    let (h, w) = (g.height.value(i), g.width.value(i));
    if h <= 0 || w <= 0 || g.image.is_null(i) {
        return Err(format!("no image (stored size {w}×{h})"));
    }
    let px = shards::decode_image(g.image.value(i), w as u32, h as u32, g.encoding)
        .map_err(|e| e.to_string())?;
    Ok((px, w as usize, h as usize))
}

fn render_row(
    g: &RowGroup,
    i: usize,
    mode: Mode,
    cfg: &AugmentConfig,
    key: u64,
    out: &mut [f32],
) -> Result<(), String> {
    let (px, w, h) = pixels(g, i)?;
    augment::render(&px, w, h, mode, cfg, key, out);
    Ok(())
}

/// Text, labels and ids: a few hundred bytes a row, copied column-wise.
fn fill_rows(batch: &mut Batch, samples: &[RawSample]) {
    let n = samples.len();
    fn reset<T: Default + Clone>(v: &mut Vec<T>, len: usize) {
        v.clear();
        v.resize(len, T::default());
    }
    reset(&mut batch.tokens, n * CONTEXT);
    reset(&mut batch.entity_mask, n * CONTEXT);
    reset(&mut batch.token_lengths, n);
    reset(&mut batch.paired, n);
    batch.labels.clear();
    batch.labels.resize(n * NUM_LABELS, LABEL_MISSING);
    batch.rows.clear();
    for (r, s) in samples.iter().enumerate() {
        let (g, i) = (&s.group, s.offset);
        batch.rows.push(RowId {
            source: s.sample.kind,
            loc: s.sample.loc,
        });
        for (c, labels) in g.labels.iter().enumerate() {
            if labels.is_valid(i) {
                batch.labels[r * NUM_LABELS + c] = labels.value(i);
            }
        }
        if s.sample.kind != SourceKind::Paired {
            continue;
        }
        batch.paired[r] = 1;
        if let Some(tokens) = g.tokens.as_ref().filter(|t| t.is_valid(i)) {
            let ids = tokens.value(i);
            let ids = ids.as_primitive::<Int32Type>().values();
            let len = ids.len().min(CONTEXT);
            for (dst, &id) in batch.tokens[r * CONTEXT..r * CONTEXT + len]
                .iter_mut()
                .zip(ids)
            {
                *dst = id as i64;
            }
            batch.token_lengths[r] = len as i64;
        }
        if let Some(mask) = g.entity_mask.as_ref().filter(|m| m.is_valid(i)) {
            let m = mask.value(i);
            let m = m.as_boolean();
            for j in 0..m.len().min(CONTEXT) {
                batch.entity_mask[r * CONTEXT + j] = m.value(j) as u8;
            }
        }
    }
}
