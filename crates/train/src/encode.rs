//! Embedding images and texts with a trained model: whole shard splits
//! (for evaluation), loose image files and text lines (`train embed`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use pipeline::{
    AugmentConfig, Batch, IMAGE_FLOATS, Loader, LoaderConfig, Mode, NUM_LABELS, Position,
    SourceKind,
};
use tch::{Device, Kind, Tensor};

use crate::data::ShardSet;
use crate::fit::fit_to;
use crate::label_sets::StoredRow;
use crate::session::Session;

/// Images encoded per forward pass.
const CHUNK: usize = 32;

/// L2-normalised projected embeddings of every row of a split.
pub struct Embedded {
    /// `[n, C]` float, CPU, unit rows.
    pub images: Tensor,
    /// `[n][14]` CheXpert labels (1, 0, -1, `LABEL_MISSING`).
    pub labels: Vec<[i8; NUM_LABELS]>,
    /// `source/shard/row` of each row.
    pub keys: Vec<String>,
    /// The shard file and row of each row.
    pub rows: Vec<StoredRow>,
}

/// Unit-normalises rows.
pub fn normalise(x: &Tensor) -> Tensor {
    x / x
        .norm_scalaropt_dim(2, [-1i64].as_slice(), true)
        .clamp_min(1e-12)
}

/// Pooled, projected, normalised image embeddings of `pixels` `[B, 3, 224, 224]`.
pub fn embed_pixels(session: &Session, pixels: &Tensor) -> Tensor {
    let _guard = tch::no_grad_guard();
    let side = session.run.mmclip.clip.vision.image_size;
    let pixels = fit_to(&pixels.to_device(session.vs.device()), side);
    normalise(&session.model.clip.encode_image(&pixels).pooled).to_device(Device::Cpu)
}

/// Normalised text embeddings `[n, C]` of `texts`.
pub fn embed_texts(session: &Session, texts: &[String]) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let ids = session.tokenize(texts)?;
    let parts: Vec<Tensor> = (0..texts.len() as i64)
        .step_by(CHUNK)
        .map(|s| {
            let n = CHUNK.min(texts.len() - s as usize) as i64;
            normalise(&session.model.clip.encode_text(&ids.narrow(0, s, n)).pooled)
                .to_device(Device::Cpu)
        })
        .collect();
    if parts.is_empty() {
        return Ok(Tensor::zeros(
            [0, session.run.mmclip.clip.projection_dim],
            (Kind::Float, Device::Cpu),
        ));
    }
    Ok(Tensor::cat(&parts, 0))
}

/// Every row of `split` in `shards` (paired folders, then unpaired), in
/// stored order, preprocessed as in evaluation (resize, centre crop).
pub fn embed_split(
    session: &Session,
    shards: &ShardSet,
    split: &str,
    threads: usize,
) -> Result<Embedded> {
    let mut out = Embedded {
        images: Tensor::zeros([0], (Kind::Float, Device::Cpu)),
        labels: Vec::new(),
        keys: Vec::new(),
        rows: Vec::new(),
    };
    let mut parts = Vec::new();
    for (only, paired_fraction) in [
        (
            ShardSet {
                unpaired: vec![],
                ..shards.clone()
            },
            1.0,
        ),
        (
            ShardSet {
                paired: vec![],
                ..shards.clone()
            },
            0.0,
        ),
    ] {
        if only.paired.is_empty() && only.unpaired.is_empty() {
            continue;
        }
        let sources = only.open(Some(split), false)?;
        let total = sources_len(&sources);
        if total == 0 {
            continue;
        }
        // One forward pass per batch; the short last batch is kept, so
        // evaluation sees every row, and each batch decodes in parallel.
        let cfg = LoaderConfig {
            batch_size: CHUNK,
            paired_fraction,
            keep_last_partial: true,
            threads,
            prefetch: 2,
            ..LoaderConfig::eval()
        };
        let loader = Loader::new(sources.clone(), &cfg, Position::default())?;
        for batch in loader {
            parts.push(embed_batch(session, &sources, &batch?, &mut out));
        }
    }
    if parts.is_empty() {
        bail!("no rows of split {split:?} in the shards");
    }
    out.images = Tensor::cat(&parts, 0);
    Ok(out)
}

fn sources_len(sources: &pipeline::Sources) -> u64 {
    [&sources.paired, &sources.unpaired]
        .into_iter()
        .flatten()
        .map(|s| s.len())
        .sum()
}

/// Embeds one loader batch and records each row's labels, key and place.
fn embed_batch(
    session: &Session,
    sources: &pipeline::Sources,
    batch: &Batch,
    out: &mut Embedded,
) -> Tensor {
    for (r, labels) in batch.rows.iter().zip(batch.labels.chunks_exact(NUM_LABELS)) {
        out.labels
            .push(labels.try_into().expect("chunks of NUM_LABELS"));
        out.keys
            .push(format!("{:?}/{}/{}", r.source, r.loc.shard, r.loc.row).to_lowercase());
        let source = match r.source {
            SourceKind::Paired => &sources.paired,
            SourceKind::Unpaired => &sources.unpaired,
        };
        let source = source
            .as_ref()
            .expect("a batch row comes from an open source");
        out.rows.push(StoredRow {
            shard: source.shard_path(r.loc.shard as usize).to_path_buf(),
            row: r.loc.row,
        });
    }
    let [b, c, h, w] = batch.images_shape().map(|d| d as i64);
    let t = Tensor::from_slice(&batch.images).view([b, c, h, w]);
    embed_pixels(session, &t)
}

/// Reads an image file as 8-bit grayscale and preprocesses it as in
/// evaluation: short side resized to 224 and centre-cropped (a 224×224
/// image is only normalised), CLIP-normalised, 3 channels.
pub fn load_image(path: &Path) -> Result<Vec<f32>> {
    let img =
        image::open(path).with_context(|| format!("{}: not a readable image", path.display()))?;
    let gray = img.into_luma8();
    let (w, h) = gray.dimensions();
    let mut out = vec![0f32; IMAGE_FLOATS];
    pipeline::render(
        gray.as_raw(),
        w as usize,
        h as usize,
        Mode::Eval,
        &AugmentConfig::none(),
        0,
        &mut out,
    );
    Ok(out)
}

/// Image files directly in `dir` (png, jpg, jpeg), sorted by name.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    Ok(files)
}
