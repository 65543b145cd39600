//! From shard folders to tensors: which folders are paired (MIMIC-CXR) and
//! which unpaired (PadChest), the tokenizer they were made with, and the
//! loader's batches wrapped as tensors.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use model::StepBatch;
use pipeline::{Batch, CONTEXT, OpenOptions, Sources};
use schemas::{MANIFEST_FILE, Manifest, Source};
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
                Source::Padchest => set.unpaired.push(dir.clone()),
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
}

/// The `manifest.json` of a shard folder.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: not a shard folder (no readable {MANIFEST_FILE})",
            dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: unreadable manifest", path.display()))
}

/// A loader batch and the tensors made from it. On CPU the image tensor
/// is the batch's own buffer (no copy); on CUDA it is copied to the device
/// once. The tensors must not outlive the buffers, so the two travel
/// together and the tensors are dropped first (field order).
pub struct Staged {
    /// The model's view of the batch.
    pub step: StepBatch,
    /// The loader's batch (owns the image buffer on CPU).
    pub batch: Batch,
}

impl Staged {
    /// Wraps `batch` for the model on `device`.
    pub fn new(batch: Batch, device: Device) -> Staged {
        let [b, c, h, w] = batch.images_shape().map(|d| d as i64);
        // SAFETY: `batch.images` holds b·c·h·w f32s, contiguous, and lives in
        // `Staged` next to the tensor, which is dropped before it. The tensor
        // is only read (the model never writes its input).
        let pixels = unsafe {
            Tensor::from_blob(
                batch.images.as_ptr() as *const u8,
                &[b, c, h, w],
                &[c * h * w, h * w, w, 1],
                Kind::Float,
                Device::Cpu,
            )
        };
        let pixels = if device == Device::Cpu {
            pixels
        } else {
            pixels.to_device(device)
        };
        let p = batch.paired_rows;
        let l = CONTEXT as i64;
        let input_ids = Tensor::from_slice(&batch.tokens[..p * CONTEXT])
            .view([p as i64, l])
            .to_device(device);
        let entity = Tensor::from_slice(&batch.entity_mask[..p * CONTEXT])
            .view([p as i64, l])
            .to_kind(Kind::Bool)
            .to_device(device);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_pixels_share_the_batch_buffer_on_cpu() {
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
        let staged = Staged::new(batch, Device::Cpu);
        assert_eq!(staged.step.pixels.size(), vec![2, 3, 224, 224]);
        assert_eq!(
            staged.step.pixels.data_ptr() as *const f32,
            staged.batch.images.as_ptr()
        );
        assert_eq!(
            staged.step.pixels.double_value(&[1, 0, 0, 5]),
            (pipeline::IMAGE_FLOATS + 5) as f64
        );
        assert_eq!(staged.step.input_ids.size(), vec![1, 77]);
        assert_eq!(staged.step.input_ids.int64_value(&[0, 2]), 49407);
        assert_eq!(staged.step.entity.int64_value(&[0, 1]), 1);
        assert_eq!(staged.step.entity.int64_value(&[0, 2]), 0);
    }
}
