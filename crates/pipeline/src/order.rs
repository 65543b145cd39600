//! The global sample order: a pure function of the seed, the epoch, the
//! global batch size (and mix), and the sources' row counts.
//!
//! Per source and per *cycle* (one pass over that source) the order is: the
//! shards shuffled, their kept rows concatenated, then shuffled within
//! consecutive windows of `shuffle_window` rows. Windows keep reading local:
//! a batch touches the row groups of at most two windows, so a small cache
//! reads each row group about once per pass.
//!
//! **Epoch.** The *primary* source defines the epoch: the paired source when
//! the mix takes paired rows, otherwise the unpaired one. An epoch is
//! `floor(primary rows / primary rows per batch)` steps; the remainder of the
//! primary's order is not seen that epoch (it differs next epoch), unless
//! the order *keeps the last partial batch*: then a mix of one source on one
//! rank ends each epoch with a short batch of the rows left over. The other
//! source *cycles*: its rows are one endless stream of passes, each with its
//! own order, consumed `per batch` rows a step across epoch boundaries, so it
//! is neither cut short nor repeated within a pass. Batches report both.
//!
//! **Ranks.** Global batch slots are `0..P` (paired) then `P..P+U`
//! (unpaired); rank `r` of `W` takes the `r`-th contiguous `P/W` of the
//! paired slots and the `r`-th `U/W` of the unpaired ones. The global order
//! does not depend on `W`, so ranks see disjoint slices of the same order.

use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::source::{RowLoc, Source, SourceKind};

/// splitmix64 finaliser: mixes a word into a well-spread word.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A stable hash of a list of words (seed first): the key of one random stream.
pub(crate) fn key(words: &[u64]) -> u64 {
    words
        .iter()
        .fold(0x6D6D_636C_6970_u64, |h, &w| mix64(h ^ mix64(w)))
}

const TAG_ORDER: u64 = 1;
const TAG_AUGMENT: u64 = 2;
const TAG_REPLACE: u64 = 3;

/// A position in training: the step (batch index) within an epoch.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Position {
    /// Epoch, from 0.
    pub epoch: u64,
    /// Step within the epoch, from 0.
    pub step: u64,
}

impl Position {
    /// The position after this one in an epoch of `steps_per_epoch` steps:
    /// the next step, or step 0 of the next epoch after the last step.
    pub fn next(self, steps_per_epoch: u64) -> Position {
        if self.step + 1 >= steps_per_epoch {
            Position {
                epoch: self.epoch + 1,
                step: 0,
            }
        } else {
            Position {
                step: self.step + 1,
                ..self
            }
        }
    }
}

/// One sample of a batch: which row, where in the batch, and its random key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SampleRef {
    pub kind: SourceKind,
    pub loc: RowLoc,
    /// Slot in the *global* batch (paired slots first).
    pub global_slot: u64,
    /// Cycle (pass) of the row's source this sample belongs to.
    pub cycle: u64,
    /// Seed of this sample's augmentation.
    pub augment_key: u64,
}

/// One source's share of the order.
struct Stream {
    source: Arc<Source>,
    per_batch: u64,
    /// Last permutations used, by cycle (a batch can straddle two cycles).
    cache: Mutex<Vec<(u64, Arc<Vec<RowLoc>>)>>,
}

/// The global sample order for a mix of a paired and an unpaired source.
pub(crate) struct Order {
    seed: u64,
    shuffle: bool,
    window: usize,
    world_size: u64,
    rank: u64,
    streams: Vec<Stream>, // [paired, unpaired]; a stream with per_batch 0 is absent
    primary: usize,
    steps_per_epoch: u64,
    /// The epoch's last step is a short batch of the primary's leftover rows.
    keep_last_partial: bool,
}

impl Order {
    /// `paired`/`unpaired` are the global per-batch counts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        seed: u64,
        shuffle: bool,
        window: usize,
        world_size: usize,
        rank: usize,
        paired: Option<(Arc<Source>, usize)>,
        unpaired: Option<(Arc<Source>, usize)>,
        keep_last_partial: bool,
    ) -> Result<Order, String> {
        let streams: Vec<Stream> = [paired, unpaired]
            .into_iter()
            .flatten()
            .filter(|(_, n)| *n > 0)
            .map(|(source, n)| Stream {
                source,
                per_batch: n as u64,
                cache: Mutex::new(Vec::new()),
            })
            .collect();
        let Some(first) = streams.first() else {
            return Err("the batch takes no rows from any source".into());
        };
        if keep_last_partial {
            if streams.len() != 1 || world_size != 1 {
                return Err(format!(
                    "a partial last batch needs a batch from one source on one rank, \
                     not {} sources on {world_size} ranks",
                    streams.len()
                ));
            }
            if first.source.is_empty() {
                return Err(format!("the {:?} source has no rows", first.source.kind()));
            }
        }
        for s in &streams {
            if !keep_last_partial && s.source.len() < s.per_batch {
                return Err(format!(
                    "the {:?} source has {} rows, fewer than the {} it must give each batch",
                    s.source.kind(),
                    s.source.len(),
                    s.per_batch
                ));
            }
        }
        let steps_per_epoch = if keep_last_partial {
            first.source.len().div_ceil(first.per_batch)
        } else {
            first.source.len() / first.per_batch
        };
        Ok(Order {
            seed,
            shuffle,
            window: window.max(1),
            world_size: world_size as u64,
            rank: rank as u64,
            streams,
            primary: 0,
            steps_per_epoch,
            keep_last_partial,
        })
    }

    /// Steps (batches) per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        self.steps_per_epoch
    }

    /// The source that defines the epoch.
    pub fn primary_kind(&self) -> SourceKind {
        self.streams[self.primary].source.kind()
    }

    /// Rows of each stream per global batch, with their source.
    pub fn streams(&self) -> impl Iterator<Item = (&Arc<Source>, u64)> {
        self.streams.iter().map(|s| (&s.source, s.per_batch))
    }

    /// The samples of this rank's batch at `pos`, paired first.
    pub fn batch(&self, pos: Position) -> Vec<SampleRef> {
        let mut out = Vec::new();
        let mut slot_base = 0u64;
        for (i, stream) in self.streams.iter().enumerate() {
            let per_rank = stream.per_batch / self.world_size;
            let mut slots = self.rank * per_rank..(self.rank + 1) * per_rank;
            if self.keep_last_partial {
                // One stream on one rank (checked in `new`): the last step
                // takes only the rows left.
                let left = stream.source.len() - pos.step * stream.per_batch;
                slots.end = slots.end.min(left);
            }
            for j in slots {
                let (cycle, index) = self.stream_index(i, pos, j);
                let perm = self.permutation(i, cycle);
                let global_slot = slot_base + j;
                out.push(SampleRef {
                    kind: stream.source.kind(),
                    loc: perm[index as usize],
                    global_slot,
                    cycle,
                    augment_key: key(&[self.seed, TAG_AUGMENT, pos.epoch, pos.step, global_slot]),
                });
            }
            slot_base += stream.per_batch;
        }
        out
    }

    /// The `attempt`-th (from 1) replacement for a sample whose row was bad:
    /// a row of the same source and cycle chosen by a hash, so the choice
    /// depends on nothing but the position and the data.
    pub fn replacement(&self, pos: Position, sample: &SampleRef, attempt: u64) -> RowLoc {
        let i = self
            .streams
            .iter()
            .position(|s| s.source.kind() == sample.kind)
            .expect("sample of a stream");
        let perm = self.permutation(i, sample.cycle);
        let h = key(&[
            self.seed,
            TAG_REPLACE,
            pos.epoch,
            pos.step,
            sample.global_slot,
            attempt,
        ]);
        perm[(h % perm.len() as u64) as usize]
    }

    /// Progress of the non-primary stream at `pos`, in passes (e.g. 2.25).
    pub fn cycles_done(&self, pos: Position) -> Vec<(SourceKind, f64)> {
        (0..self.streams.len())
            .map(|i| {
                let s = &self.streams[i];
                let consumed = if i == self.primary {
                    pos.epoch as f64 + (pos.step * s.per_batch) as f64 / s.source.len() as f64
                } else {
                    ((pos.epoch * self.steps_per_epoch + pos.step) * s.per_batch) as f64
                        / s.source.len() as f64
                };
                (s.source.kind(), consumed)
            })
            .collect()
    }

    /// (cycle, index in that cycle's permutation) of slot `j` of stream `i`.
    fn stream_index(&self, i: usize, pos: Position, j: u64) -> (u64, u64) {
        let s = &self.streams[i];
        if i == self.primary {
            (pos.epoch, pos.step * s.per_batch + j)
        } else {
            let n = s.source.len();
            let q = (pos.epoch * self.steps_per_epoch + pos.step) * s.per_batch + j;
            (q / n, q % n)
        }
    }

    fn permutation(&self, i: usize, cycle: u64) -> Arc<Vec<RowLoc>> {
        let stream = &self.streams[i];
        let mut cache = stream.cache.lock().expect("order cache lock");
        if let Some((_, p)) = cache.iter().find(|(c, _)| *c == cycle) {
            return p.clone();
        }
        let p = Arc::new(permutation(
            &stream.source,
            self.seed,
            i as u64,
            cycle,
            self.window,
            self.shuffle,
        ));
        if cache.len() >= 2 {
            cache.remove(0);
        }
        cache.push((cycle, p.clone()));
        p
    }
}

/// One pass over `source`: shards shuffled, rows shuffled within windows.
pub(crate) fn permutation(
    source: &Source,
    seed: u64,
    stream: u64,
    cycle: u64,
    window: usize,
    shuffle: bool,
) -> Vec<RowLoc> {
    let mut rng = ChaCha8Rng::seed_from_u64(key(&[seed, TAG_ORDER, stream, cycle]));
    let mut shards: Vec<usize> = (0..source.num_shards()).collect();
    if shuffle {
        shards.shuffle(&mut rng);
    }
    let mut rows: Vec<RowLoc> = shards
        .iter()
        .flat_map(|&s| {
            source.kept_rows(s).iter().map(move |&row| RowLoc {
                shard: s as u32,
                row,
            })
        })
        .collect();
    if shuffle {
        for w in rows.chunks_mut(window) {
            w.shuffle(&mut rng);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::Position;

    #[test]
    fn next_position_rolls_over_at_the_end_of_the_epoch() {
        let at = |epoch, step| Position { epoch, step };
        assert_eq!(at(0, 0).next(3), at(0, 1));
        assert_eq!(at(0, 1).next(3), at(0, 2));
        assert_eq!(at(0, 2).next(3), at(1, 0));
        assert_eq!(at(4, 2).next(3), at(5, 0));
        // A one-step epoch advances the epoch every step.
        assert_eq!(at(7, 0).next(1), at(8, 0));
        // Walking a whole epoch visits each step once, in order.
        let walked: Vec<Position> = std::iter::successors(Some(at(2, 0)), |p| Some(p.next(4)))
            .take(6)
            .collect();
        assert_eq!(
            walked,
            [at(2, 0), at(2, 1), at(2, 2), at(2, 3), at(3, 0), at(3, 1)]
        );
    }
}
