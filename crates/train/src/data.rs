//! From shard folders to tensors: which folders are paired (MIMIC-CXR) and
//! which unpaired (PadChest), the tokenizer they were made with, and the
//! loader's batches wrapped as tensors.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use model::StepBatch;
use pipeline::{Batch, CONTEXT, OpenOptions, Sources};
use schemas::{MANIFEST_FILE, Manifest, Source};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

/// Shard folders sorted by what they hold.
#[derive(Debug, Clone, Default)]
pub struct ShardSet {
    /// Folders of paired (image + report) shards.
    pub paired: Vec<PathBuf>,
    /// Folders of image-only shards.
    pub unpaired: Vec<PathBuf>,
    /// The tokenizer the paired shards were made with (from their manifest).
    pub tokenizer: Option<PathBuf>,
}

impl ShardSet {
    /// Reads each folder's `manifest.json` and sorts the folders by source.
    /// Paired folders made with different tokenizers are an error.
    pub fn from_dirs(dirs: &[PathBuf]) -> Result<ShardSet> {
        let mut set = ShardSet::default();
        let mut tokenizer_sha: Option<String> = None;
        for dir in dirs {
            let manifest = read_manifest(dir)?;
            match manifest.source {
                Source::Mimic => {
                    if let Some(t) = &manifest.tokenizer {
                        if let Some(sha) = &tokenizer_sha
                            && sha != &t.sha256
                        {
                            bail!(
                                "{}: made with another tokenizer ({}) than the other paired shards",
                                dir.display(),
                                t.path
                            );
                        }
                        tokenizer_sha = Some(t.sha256.clone());
                        set.tokenizer.get_or_insert_with(|| PathBuf::from(&t.path));
                    }
                    set.paired.push(dir.clone());
                }
                Source::Padchest
                | Source::Covidx
                | Source::Nih
                | Source::Chexpert
                | Source::Rsna => set.unpaired.push(dir.clone()),
            }
        }
        Ok(set)
    }

    /// Opens the folders for the loader, keeping rows of `split` (all rows
    /// when `None`).
    pub fn open(&self, split: Option<&str>, verify_sha256: bool) -> Result<Sources> {
        let opts = OpenOptions {
            verify_sha256,
            split: split.map(str::to_owned),
        };
        Sources::open(&self.paired, &self.unpaired, &opts).context("opening the shards")
    }

    /// Hashes every shard of every folder (all splits) and compares it with
    /// its manifest's sha256, so that later opens of single splits need not
    /// hash again. A damaged shard is an error naming it.
    pub fn verify(&self) -> Result<()> {
        self.open(None, true)
            .map(drop)
            .context("checking the shards' sha256 against their manifests (--no-verify skips this)")
    }
}

/// A shard folder as a run records it: where it was and the sha256 of its
/// `manifest.json`, which lists every shard's own sha256, so equal manifest
/// hashes mean the same rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// The folder, made absolute when possible.
    pub dir: PathBuf,
    /// sha256 of its `manifest.json`.
    pub manifest_sha256: String,
}

impl ShardRecord {
    /// Records each folder, in the order given (the loader's order).
    pub fn of_dirs(dirs: &[PathBuf]) -> Result<Vec<ShardRecord>> {
        dirs.iter()
            .map(|dir| {
                let path = dir.join(MANIFEST_FILE);
                let bytes = std::fs::read(&path).with_context(|| {
                    format!(
                        "{}: not a shard folder (no readable {MANIFEST_FILE})",
                        dir.display()
                    )
                })?;
                Ok(ShardRecord {
                    dir: std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone()),
                    manifest_sha256: hex::encode(Sha256::digest(&bytes)),
                })
            })
            .collect()
    }
}

/// Why `now` are not the shards `recorded` (the first difference, naming
/// the folder), or `None` when their manifests are the same, in the same
/// order. A folder that moved with an unchanged manifest holds the same
/// rows, so only the hashes are compared.
pub fn shards_differ(recorded: &[ShardRecord], now: &[ShardRecord]) -> Option<String> {
    for i in 0..recorded.len().max(now.len()) {
        match (recorded.get(i), now.get(i)) {
            (Some(r), Some(n)) if r.manifest_sha256 != n.manifest_sha256 => {
                return Some(if r.dir == n.dir {
                    format!(
                        "--shards {}: its manifest.json changed (sha256 {}, the run recorded {})",
                        n.dir.display(),
                        n.manifest_sha256,
                        r.manifest_sha256
                    )
                } else {
                    format!(
                        "--shards {} (manifest sha256 {}) is not the folder the run was trained on \
                         in that place: {} (manifest sha256 {})",
                        n.dir.display(),
                        n.manifest_sha256,
                        r.dir.display(),
                        r.manifest_sha256
                    )
                });
            }
            (Some(r), None) => {
                return Some(format!(
                    "the run was also trained on {} (manifest sha256 {}), which is not among --shards",
                    r.dir.display(),
                    r.manifest_sha256
                ));
            }
            (None, Some(n)) => {
                return Some(format!(
                    "--shards {} was not among the shards the run was trained on",
                    n.dir.display()
                ));
            }
            _ => {}
        }
    }
    None
}

/// The `manifest.json` of a shard folder (see [`shards::read_manifest`]).
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    shards::read_manifest(dir).with_context(|| format!("{}: not a shard folder", dir.display()))
}

/// How wide the text of a staged batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextWidth {
    /// Up to the longest report's end-of-text: the least work.
    Longest,
    /// The whole context: one shape for every batch (a captured CUDA
    /// graph's), the same losses up to rounding (the text encoders are
    /// causal, EntMLM's noise covers the context).
    Context,
}

/// A loader batch and the tensors made from it. The tensors hold copies
/// of the batch's buffers (one host copy of the images, a few MB, next to
/// the decode that made them); the batch is kept for its row ids and
/// progress.
pub struct Staged {
    /// The model's view of the batch.
    pub step: StepBatch,
    /// The loader's batch.
    pub batch: Batch,
}

impl Staged {
    /// Wraps `batch` for the model on `device`, the text cut after the
    /// longest report.
    pub fn new(batch: Batch, device: Device) -> Staged {
        // Uploaded without blocking: a blocking copy would make the host
        // wait for the step queued before.
        let pixels = model::transfer::upload(&host_pixels(&batch), device);
        Staged::around(batch, device, TextWidth::Longest, pixels)
    }

    /// For a captured step (`train --cuda-graph`): the text over the whole
    /// context, and the images copied on a stream of their own, so that
    /// on CUDA the copy overlaps the step queued before
    /// ([`model::transfer::upload_beside`]) instead of waiting for it.
    pub fn for_graph(batch: Batch, device: Device) -> Result<Staged> {
        let pixels = model::transfer::upload_beside(&host_pixels(&batch), device)
            .map_err(anyhow::Error::msg)
            .context("uploading a batch's images")?;
        Ok(Staged::around(batch, device, TextWidth::Context, pixels))
    }

    /// The batch's text uploaded next to its `pixels`.
    fn around(batch: Batch, device: Device, width: TextWidth, pixels: Tensor) -> Staged {
        let upload = |t: Tensor| model::transfer::upload(&t, device);
        let p = batch.paired_rows;
        // The text as wide as the longest report (with its end-of-text),
        // cut here where the lengths are known: the columns after it change
        // nothing in the causal text encoders.
        let width = match width {
            TextWidth::Longest => batch
                .token_lengths
                .iter()
                .take(p)
                .copied()
                .max()
                .unwrap_or(0)
                .clamp(1, CONTEXT as i64),
            TextWidth::Context => CONTEXT as i64,
        };
        let rows = |t: Tensor| {
            t.view([p as i64, CONTEXT as i64])
                .narrow(1, 0, width)
                .contiguous()
        };
        let input_ids = upload(rows(Tensor::from_slice(&batch.tokens[..p * CONTEXT])));
        let entity =
            upload(rows(Tensor::from_slice(&batch.entity_mask[..p * CONTEXT])).to_kind(Kind::Bool));
        Staged {
            step: StepBatch {
                pixels,
                input_ids,
                entity,
            },
            batch,
        }
    }
}

/// The batch's images on the host, `[B, 3, H, W]`.
fn host_pixels(batch: &Batch) -> Tensor {
    let [b, c, h, w] = batch.images_shape().map(|d| d as i64);
    Tensor::from_slice(&batch.images).view([b, c, h, w])
}

/// Where every kept row of `sources` is stored (paired, then image-only;
/// shards and rows in order).
pub fn stored_rows(sources: &Sources) -> Vec<crate::label_sets::StoredRow> {
    let mut rows = Vec::new();
    for source in [&sources.paired, &sources.unpaired].into_iter().flatten() {
        for shard in 0..source.num_shards() {
            rows.extend(
                source
                    .kept_rows(shard)
                    .iter()
                    .map(|&row| crate::label_sets::StoredRow {
                        shard: source.shard_path(shard).to_path_buf(),
                        row,
                    }),
            );
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_tensors_hold_the_batch_values() {
        let mut batch = Batch {
            size: 2,
            paired_rows: 1,
            ..Default::default()
        };
        let floats = 2 * pipeline::IMAGE_FLOATS;
        batch.images = (0..floats).map(|i| i as f32).collect();
        batch.tokens = vec![0; 2 * CONTEXT];
        batch.tokens[..3].copy_from_slice(&[49406, 320, 49407]);
        batch.entity_mask = vec![0; 2 * CONTEXT];
        batch.entity_mask[1] = 1;
        batch.token_lengths = vec![3, 0];
        // A captured step's staging: the same images, the whole context.
        let fixed = Staged::for_graph(batch.clone(), Device::Cpu).unwrap();
        let staged = Staged::new(batch, Device::Cpu);
        assert!(fixed.step.pixels.equal(&staged.step.pixels));
        assert_eq!(fixed.step.input_ids.size(), vec![1, CONTEXT as i64]);
        assert!(
            fixed
                .step
                .input_ids
                .narrow(1, 0, 3)
                .equal(&staged.step.input_ids)
        );
        assert_eq!(fixed.step.entity.size(), vec![1, CONTEXT as i64]);
        assert_eq!(staged.step.pixels.size(), vec![2, 3, 224, 224]);
        assert_eq!(
            staged.step.pixels.double_value(&[1, 0, 0, 5]),
            (pipeline::IMAGE_FLOATS + 5) as f64
        );
        // Cut after the longest report's end-of-text.
        assert_eq!(staged.step.input_ids.size(), vec![1, 3]);
        assert_eq!(staged.step.entity.size(), vec![1, 3]);
        assert_eq!(staged.step.input_ids.int64_value(&[0, 2]), 49407);
        assert_eq!(staged.step.entity.int64_value(&[0, 1]), 1);
        assert_eq!(staged.step.entity.int64_value(&[0, 2]), 0);
    }

    fn record(dir: &str, sha: &str) -> ShardRecord {
        ShardRecord {
            dir: PathBuf::from(dir),
            manifest_sha256: sha.into(),
        }
    }

    #[test]
    fn other_shards_are_named_and_moved_ones_are_the_same() {
        let run = [record("/a", "1"), record("/b", "2")];
        assert_eq!(shards_differ(&run, &run), None);
        // Moved, same manifest: the same rows.
        assert_eq!(
            shards_differ(&run, &[record("/x/a", "1"), record("/b", "2")]),
            None
        );
        let changed = shards_differ(&run, &[record("/a", "1"), record("/b", "3")]).unwrap();
        assert!(
            changed.contains("/b") && changed.contains("changed"),
            "{changed}"
        );
        let other = shards_differ(&run, &[record("/a2", "9"), record("/b", "2")]).unwrap();
        assert!(other.contains("/a2") && other.contains("/a "), "{other}");
        let fewer = shards_differ(&run, &run[..1]).unwrap();
        assert!(
            fewer.contains("/b") && fewer.contains("not among"),
            "{fewer}"
        );
        let more = shards_differ(&run[..1], &run).unwrap();
        assert!(
            more.contains("/b") && more.contains("was not among"),
            "{more}"
        );
        // The loader's order is part of the run.
        let swapped = [run[1].clone(), run[0].clone()];
        assert!(shards_differ(&run, &swapped).is_some());
    }
}
