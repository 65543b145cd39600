//! The prefetcher: the read and decode stages on their own threads, joined
//! by bounded channels, so batches are ready before the trainer asks.
//!
//! ```text
//! read thread ──RawBatch──▶ decode thread (rayon pool) ──Batch──▶ consumer (next())
//!            bounded(prefetch)                         bounded(prefetch)
//!                  ◀──────────── spent batches (recycle) ────────────
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::batch::{Batch, Maker, RawBatch};
use crate::config::LoaderConfig;
use crate::error::PipelineError;
use crate::order::Position;
use crate::source::{SourceKind, Sources};
use crate::stats::{Counters, LoaderStats};

/// What a stage sends downstream.
pub enum Message<T> {
    /// The next item, in order.
    Batch(T),
    /// The configured epochs are done.
    Done,
    /// The stage failed; nothing follows.
    Error(PipelineError),
}

enum Engine {
    /// `prefetch == 0`: batches made inside `next()`.
    Inline {
        maker: Maker,
        next: Option<Position>,
        epochs: Option<u64>,
    },
    /// Background stages.
    Threaded {
        ready: Receiver<Message<Batch>>,
        raw_depth: Receiver<Message<RawBatch>>,
        recycle: Sender<Batch>,
        stop: Arc<AtomicBool>,
        threads: Vec<JoinHandle<()>>,
    },
}

/// Mixed, augmented batches for one rank, in order, from a start position.
/// An iterator of `Result<Batch, PipelineError>`; it ends after the
/// configured epochs, or never. Dropping it stops and joins its threads.
pub struct Loader {
    engine: Engine,
    counters: Arc<Counters>,
    steps_per_epoch: u64,
    primary: SourceKind,
    first_next: Option<Instant>,
    finished: bool,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("steps_per_epoch", &self.steps_per_epoch)
            .finish()
    }
}

/// Positions from `from` to the end of the configured epochs.
fn positions(from: Position, steps: u64, epochs: Option<u64>) -> impl Iterator<Item = Position> {
    std::iter::successors(Some(from), move |p| Some(p.next(steps)))
        .take_while(move |p| epochs.is_none_or(|e| p.epoch < e) && p.step < steps)
}

impl Loader {
    /// Starts a loader at `from` (`Position::default()` for a fresh run;
    /// a checkpoint's next position to resume: the batches are the ones an
    /// uninterrupted run would have produced from there).
    pub fn new(
        sources: Sources,
        cfg: &LoaderConfig,
        from: Position,
    ) -> Result<Loader, PipelineError> {
        let maker = Maker::new(sources, cfg)?;
        let steps = maker.order.steps_per_epoch();
        let primary = maker.order.primary_kind();
        let counters = maker.counters.clone();
        if from.step >= steps {
            return Err(PipelineError::Config(format!(
                "start step {} is past the epoch's {steps} steps",
                from.step
            )));
        }
        let engine = if cfg.prefetch == 0 {
            Engine::Inline {
                maker,
                next: Some(from).filter(|p| cfg.epochs.is_none_or(|e| p.epoch < e)),
                epochs: cfg.epochs,
            }
        } else {
            spawn(maker, cfg, from)
        };
        Ok(Loader {
            engine,
            counters,
            steps_per_epoch: steps,
            primary,
            first_next: None,
            finished: false,
        })
    }

    /// Steps per epoch (see the `order` module for the definition).
    pub fn steps_per_epoch(&self) -> u64 {
        self.steps_per_epoch
    }

    /// The source whose pass defines the epoch.
    pub fn epoch_source(&self) -> SourceKind {
        self.primary
    }

    /// Gives a spent batch back so its buffers are reused (optional).
    pub fn recycle(&self, batch: Batch) {
        if let Engine::Threaded { recycle, .. } = &self.engine {
            let _ = recycle.try_send(batch);
        }
    }

    /// Stage times, queue depths and waiting so far.
    pub fn stats(&self) -> LoaderStats {
        let elapsed = self.first_next.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let (raw, ready) = match &self.engine {
            Engine::Inline { .. } => (0, 0),
            Engine::Threaded {
                ready, raw_depth, ..
            } => (raw_depth.len(), ready.len()),
        };
        LoaderStats::from_counters(&self.counters, elapsed, raw, ready)
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, PipelineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let start = Instant::now();
        self.first_next.get_or_insert(start);
        let steps = self.steps_per_epoch;
        let message = match &mut self.engine {
            Engine::Inline {
                maker,
                next,
                epochs,
            } => match next.take() {
                None => Message::Done,
                Some(pos) => {
                    *next = positions(pos, steps, *epochs).nth(1);
                    match maker.read(pos).and_then(|raw| maker.decode(raw, None)) {
                        Ok(b) => Message::Batch(b),
                        Err(e) => Message::Error(e),
                    }
                }
            },
            Engine::Threaded { ready, .. } => ready.recv().unwrap_or_else(|_| {
                Message::Error(PipelineError::Stopped(
                    "the decode thread ended without a message".into(),
                ))
            }),
        };
        Counters::add(&self.counters.wait_nanos, start.elapsed().as_nanos());
        match message {
            Message::Batch(b) => {
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                Some(Ok(b))
            }
            Message::Done => {
                self.finished = true;
                None
            }
            Message::Error(e) => {
                self.finished = true;
                Some(Err(e))
            }
        }
    }
}

fn spawn(maker: Maker, cfg: &LoaderConfig, from: Position) -> Engine {
    let maker = Arc::new(maker);
    let stop = Arc::new(AtomicBool::new(false));
    // Bounded channels are the memory bound: at most `prefetch` raw and
    // `prefetch` ready batches exist, plus one in each stage's hands.
    let (raw_tx, raw_rx) = bounded::<Message<RawBatch>>(cfg.prefetch);
    let (ready_tx, ready_rx) = bounded::<Message<Batch>>(cfg.prefetch);
    let (recycle_tx, recycle_rx) = bounded::<Batch>(cfg.prefetch + 2);
    let (steps, epochs) = (maker.order.steps_per_epoch(), cfg.epochs);

    let reader = {
        let (maker, stop) = (maker.clone(), stop.clone());
        std::thread::Builder::new()
            .name("pipeline-read".into())
            .spawn(move || {
                for pos in positions(from, steps, epochs) {
                    // Checked between batches so Drop does not wait for a
                    // whole epoch; a blocked send ends when Drop closes the
                    // channel.
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let message = match maker.read(pos) {
                        Ok(raw) => Message::Batch(raw),
                        Err(e) => Message::Error(e),
                    };
                    let failed = matches!(message, Message::Error(_));
                    if raw_tx.send(message).is_err() || failed {
                        return;
                    }
                }
                let _ = raw_tx.send(Message::Done);
            })
            .expect("spawn read thread")
    };
    let decoder = {
        let (maker, stop, raw_rx) = (maker.clone(), stop.clone(), raw_rx.clone());
        std::thread::Builder::new()
            .name("pipeline-decode".into())
            .spawn(move || {
                // One decode thread keeps batches in order; the parallelism
                // is inside a batch, on the rayon pool.
                for message in raw_rx.iter() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let out = match message {
                        Message::Batch(raw) => {
                            match maker.decode(raw, recycle_rx.try_recv().ok()) {
                                Ok(b) => Message::Batch(b),
                                Err(e) => Message::Error(e),
                            }
                        }
                        Message::Done => Message::Done,
                        Message::Error(e) => Message::Error(e),
                    };
                    let last = !matches!(out, Message::Batch(_));
                    if ready_tx.send(out).is_err() || last {
                        return;
                    }
                }
            })
            .expect("spawn decode thread")
    };
    Engine::Threaded {
        ready: ready_rx,
        raw_depth: raw_rx,
        recycle: recycle_tx,
        stop,
        threads: vec![reader, decoder],
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if let Engine::Threaded {
            stop,
            threads,
            ready,
            raw_depth,
            ..
        } = &mut self.engine
        {
            stop.store(true, Ordering::Relaxed);
            // Empty the queues so a stage blocked in `send` wakes up, sees
            // the flag, and ends; then join.
            while ready.try_recv().is_ok() {}
            while raw_depth.try_recv().is_ok() {}
            for t in threads.drain(..) {
                while !t.is_finished() {
                    while ready.try_recv().is_ok() {}
                    while raw_depth.try_recv().is_ok() {}
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                let _ = t.join();
            }
        }
    }
}
