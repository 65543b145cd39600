//! `train embed`: projected, L2-normalised embeddings of image files or
//! text lines into a Parquet file (`key` utf8, `embedding` fixed-size list
//! of float32), from a run's checkpoint or a Hugging Face `CLIPModel` folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use tch::{Device, Tensor};
use text::tokenize::ClipTokenizer;

use crate::encode::{image_files, load_image, normalise};
use crate::fit::{fit_to, partial_path, write_atomic};
use crate::session::Weights;
use pipeline::CONTEXT;

/// What to embed.
#[derive(Debug, Clone)]
pub struct EmbedOptions {
    /// Checkpoint, run folder, or HF folder.
    pub weights: PathBuf,
    /// Image folder.
    pub images: Option<PathBuf>,
    /// Text file, one text per line.
    pub texts: Option<PathBuf>,
    /// Tokenizer for a HF folder without `tokenizer.json`.
    pub tokenizer: Option<PathBuf>,
    /// Parquet output.
    pub out: PathBuf,
    /// Device.
    pub device: Device,
}

/// Writes the embeddings file.
pub fn run(opts: &EmbedOptions) -> Result<()> {
    // A run killed while writing leaves its temporary file; it is never
    // renamed into place, so it goes before anything else can fail.
    let stale = partial_path(&opts.out);
    if stale.is_file() {
        std::fs::remove_file(&stale)
            .with_context(|| format!("removing the unfinished {}", stale.display()))?;
    }
    let weights = Weights::open(&opts.weights, opts.tokenizer.as_deref(), opts.device)?;
    let (clip, cfg) = weights.clip();
    let _guard = tch::no_grad_guard();
    let (keys, embeddings): (Vec<String>, Vec<Tensor>) = match (&opts.images, &opts.texts) {
        (Some(dir), _) => {
            let files = image_files(dir)?;
            let mut parts = Vec::new();
            for chunk in files.chunks(32) {
                let pixels: Vec<f32> = chunk
                    .iter()
                    .map(|f| load_image(f))
                    .collect::<Result<Vec<_>>>()?
                    .concat();
                let t = Tensor::from_slice(&pixels)
                    .view([chunk.len() as i64, 3, 224, 224])
                    .to_device(opts.device);
                let t = fit_to(&t, cfg.vision.image_size);
                parts.push(normalise(&clip.encode_image(&t).pooled).to_device(Device::Cpu));
            }
            let keys = files
                .iter()
                .map(|f| {
                    f.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            (keys, parts)
        }
        (None, Some(file)) => {
            let lines = read_texts(file)?;
            let mut parts = Vec::new();
            for chunk in lines.chunks(64) {
                let ids = text_ids(weights.tokenizer()?, file, chunk)?.to_device(opts.device);
                parts.push(normalise(&clip.encode_text(&ids).pooled).to_device(Device::Cpu));
            }
            (lines.into_iter().map(|(_, text)| text).collect(), parts)
        }
        (None, None) => bail!("pass --images DIR or --texts FILE"),
    };
    if keys.is_empty() {
        bail!("nothing to embed");
    }
    let emb = Tensor::cat(&embeddings, 0);
    write_parquet(&opts.out, &keys, &emb)?;
    eprintln!(
        "wrote {} embeddings of width {} to {}",
        keys.len(),
        emb.size()[1],
        opts.out.display()
    );
    Ok(())
}

/// The non-blank lines of a text file with their 1-based line numbers. A
/// line that is not UTF-8 is an error naming the file and the line.
fn read_texts(file: &Path) -> Result<Vec<(usize, String)>> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let mut lines = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}: not UTF-8 text (bad byte at column {})",
                file.display(),
                i + 1,
                e.valid_up_to() + 1
            )
        })?;
        if !text.trim().is_empty() {
            lines.push((i + 1, text.to_owned()));
        }
    }
    if lines.is_empty() {
        bail!("{}: no text to embed (every line is blank)", file.display());
    }
    Ok(lines)
}

/// Token ids `[n, 77]` of numbered lines of `file`, on the CPU; a line the
/// tokenizer refuses is named by file and line.
fn text_ids(tokenizer: &ClipTokenizer, file: &Path, lines: &[(usize, String)]) -> Result<Tensor> {
    let mut ids = vec![0i64; lines.len() * CONTEXT];
    for (row, (line, text)) in lines.iter().enumerate() {
        let t = tokenizer
            .encode_text(text)
            .with_context(|| format!("{}:{line}: cannot tokenize the text", file.display()))?;
        for (i, id) in t.ids.iter().take(CONTEXT).enumerate() {
            ids[row * CONTEXT + i] = *id as i64;
        }
    }
    Ok(Tensor::from_slice(&ids).view([lines.len() as i64, CONTEXT as i64]))
}

/// `key`, `embedding` Parquet file, written atomically.
pub fn write_parquet(path: &Path, keys: &[String], emb: &Tensor) -> Result<()> {
    let width = emb.size()[1] as i32;
    let values: Vec<f32> = Vec::try_from(&emb.contiguous().view([-1]))?;
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let list = FixedSizeListArray::try_new(
        item.clone(),
        width,
        Arc::new(Float32Array::from(values)),
        None,
    )?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("embedding", DataType::FixedSizeList(item, width), false),
    ]));
    let columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from(keys.to_vec())), Arc::new(list)];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let mut bytes = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, None)?;
    writer.write(&batch)?;
    writer.close()?;
    write_atomic(path, &bytes)
}
