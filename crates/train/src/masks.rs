//! `train viz-masks`: what AttMIM masks. For sample images of a split it
//! draws, per image, the picture next to the mask of each strategy (random,
//! image-report, prompt-driven, image-self, attmim), masked patches tinted;
//! with the synthetic world's `lesions.jsonl` it also measures the share of
//! lesion patches each strategy masks (lesion boxes outlined in the pictures)
//! and the share of patches in each strategy's candidate set M_b: when the
//! maps' union holds nearly every patch, AttMIM's mask is close to random.
//! `lambda1` replaces the checkpoint's λ1, to see how it shapes both.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::{Rgb, RgbImage};
use model::att_mim::{AttMimConfig, MaskStrategy};
use pipeline::{CONTEXT, IMAGE_SIZE, Loader, LoaderConfig, Position};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::{ShardSet, stored_rows};
use crate::fit::{fit_to, write_atomic};
use crate::label_sets::{StoredRow, row_meta};
use crate::session::Session;

/// The strategies drawn, in column order.
pub const STRATEGIES: [MaskStrategy; 5] = [
    MaskStrategy::Random,
    MaskStrategy::ImageReport,
    MaskStrategy::PromptDriven,
    MaskStrategy::ImageSelf,
    MaskStrategy::AttMim,
];

/// What to draw.
#[derive(Debug, Clone)]
pub struct MaskOptions {
    /// Checkpoint or run folder.
    pub checkpoint: PathBuf,
    /// A paired (MIMIC-CXR) shard folder.
    pub shards: PathBuf,
    /// Split to take images from.
    pub split: String,
    /// Images drawn.
    pub pictures: usize,
    /// Images measured against lesions (the first this many with lesions).
    pub measure: usize,
    /// The synthetic world's `lesions.jsonl`.
    pub lesions: Option<PathBuf>,
    /// Mask seed.
    pub seed: u64,
    /// λ1 instead of the checkpoint's.
    pub lambda1: Option<f64>,
    /// Loader threads.
    pub threads: usize,
    /// Output folder.
    pub out: PathBuf,
    /// Device.
    pub device: Device,
    /// Hash every shard against its manifest first.
    pub verify_sha256: bool,
}

/// Share of lesion patches each strategy masked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LesionShares {
    /// Images measured.
    pub images: usize,
    /// Lesion patches over those images.
    pub lesion_patches: usize,
    /// The λ1 the masks were drawn with.
    pub lambda1: f64,
    /// The λ2 the masks were drawn with.
    pub lambda2: f64,
    /// (strategy, masked lesion patches / lesion patches).
    pub shares: Vec<(MaskStrategy, f64)>,
    /// (strategy, patches in M_b / all patches, over every image drawn or measured).
    pub candidate_shares: Vec<(MaskStrategy, f64)>,
}

/// One line of `lesions.jsonl`.
#[derive(Debug, Deserialize)]
struct LesionLine {
    image_id: String,
    width: u32,
    height: u32,
    lesions: Vec<LesionBox>,
}

#[derive(Debug, Deserialize)]
struct LesionBox {
    bbox: [f64; 4],
}

/// Draws the pictures and measures lesion shares; returns the shares when
/// lesions were given.
pub fn run(opts: &MaskOptions) -> Result<Option<LesionShares>> {
    if opts.verify_sha256 {
        crate::data::ShardSet::from_dirs(std::slice::from_ref(&opts.shards))?.verify()?;
    }
    let session = Session::from_checkpoint(&opts.checkpoint, opts.device)?;
    let mut settings = session.model.att_mim_config().clone();
    if let Some(l1) = opts.lambda1 {
        settings.lambda1 = l1;
        settings
            .check()
            .map_err(|problem| anyhow::anyhow!("--lambda1: {problem}"))?;
    }
    let lesions = match &opts.lesions {
        Some(path) => read_lesions(path)?,
        None => HashMap::new(),
    };
    let wanted = opts
        .pictures
        .max(if lesions.is_empty() { 0 } else { opts.measure });
    let rows = sample_rows(&opts.shards, &opts.split, wanted, &lesions, opts.threads)?;
    if rows.is_empty() {
        bail!(
            "{}: no paired rows of split {:?}",
            opts.shards.display(),
            opts.split
        );
    }
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    // Per strategy: candidate set and final mask, [n, N] each.
    let (candidates, masks) = strategy_masks(&session, &rows, opts.seed, &settings)?;
    let n_side = (session.run.mmclip.clip.vision.image_size
        / session.run.mmclip.clip.vision.patch_size) as usize;
    let boxes: Vec<Vec<[f64; 4]>> = rows
        .iter()
        .map(|r| crop_boxes(lesions.get(&r.image_id)))
        .collect();

    let shown = rows.len().min(opts.pictures);
    for (i, row) in rows.iter().take(shown).enumerate() {
        let picture = draw_row(&row.pixels, &masks, i, n_side, &boxes[i]);
        let path = opts
            .out
            .join(format!("masks-{:02}-{}.png", i, row.image_id));
        let mut png = Vec::new();
        picture
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .context("encoding a mask picture")?;
        write_atomic(&path, &png)?;
    }
    if lesions.is_empty() {
        return Ok(None);
    }
    let candidate_shares = STRATEGIES
        .iter()
        .zip(&candidates)
        .map(|(s, c)| {
            (
                *s,
                c.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]),
            )
        })
        .collect();
    let (images, lesion_patches, shares) = lesion_shares(&masks, &boxes, n_side);
    let shares = LesionShares {
        images,
        lesion_patches,
        lambda1: settings.lambda1,
        lambda2: settings.lambda2,
        shares,
        candidate_shares,
    };
    write_atomic(
        &opts.out.join("lesion_shares.json"),
        &serde_json::to_vec_pretty(&shares)?,
    )?;
    Ok(Some(shares))
}

fn read_lesions(path: &Path) -> Result<HashMap<String, LesionLine>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = HashMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let l: LesionLine = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a lesion line", path.display(), i + 1))?;
        out.insert(l.image_id.clone(), l);
    }
    Ok(out)
}

/// A sampled paired row: its image id, its pixels as the loader's
/// evaluation mode gives them (resize, centre crop), its token ids.
struct Sampled {
    image_id: String,
    pixels: Vec<f32>,
    tokens: Vec<i64>,
}

/// Up to `n` paired rows of `split`, rows with lesions first when lesions
/// are known, read through the loader's evaluation mode.
fn sample_rows(
    dir: &Path,
    split: &str,
    n: usize,
    lesions: &HashMap<String, LesionLine>,
    threads: usize,
) -> Result<Vec<Sampled>> {
    let shards = ShardSet::from_dirs(&[dir.to_path_buf()])?;
    if shards.paired.is_empty() {
        bail!(
            "{}: not a paired (MIMIC-CXR) shard folder: the masks need reports",
            dir.display()
        );
    }
    let mut sources = shards.open(Some(split), false)?;
    let stored = stored_rows(&sources);
    let Some(source) = sources.paired.as_mut() else {
        bail!("{}: no paired source", dir.display());
    };
    let meta = row_meta(&stored)?;
    let has = |i: &usize| {
        lesions
            .get(&meta[*i].image_id)
            .is_some_and(|l| !l.lesions.is_empty())
    };
    let mut chosen: Vec<usize> = (0..stored.len()).filter(|i| has(i)).take(n).collect();
    chosen.extend((0..stored.len()).filter(|i| !has(i)).take(n - chosen.len()));
    let index: HashMap<&StoredRow, usize> = chosen.iter().map(|&i| (&stored[i], i)).collect();
    let paths: Vec<PathBuf> = (0..source.num_shards())
        .map(|s| source.shard_path(s).to_path_buf())
        .collect();
    std::sync::Arc::get_mut(source)
        .expect("a just-opened source has one owner")
        .retain(|s, row| {
            index.contains_key(&StoredRow {
                shard: paths[s].clone(),
                row,
            })
        });
    let cfg = LoaderConfig {
        batch_size: 32,
        paired_fraction: 1.0,
        keep_last_partial: true,
        threads,
        prefetch: 2,
        ..LoaderConfig::eval()
    };
    let mut read: HashMap<usize, Sampled> = HashMap::new();
    for batch in Loader::new(sources.clone(), &cfg, Position::default())? {
        let batch = batch?;
        for (r, id) in batch.rows.iter().enumerate() {
            let stored = StoredRow {
                shard: paths[id.loc.shard as usize].clone(),
                row: id.loc.row,
            };
            let i = index[&stored];
            read.insert(
                i,
                Sampled {
                    image_id: meta[i].image_id.clone(),
                    pixels: batch.image(r).to_vec(),
                    tokens: batch.tokens[r * CONTEXT..(r + 1) * CONTEXT].to_vec(),
                },
            );
        }
    }
    chosen
        .iter()
        .map(|i| {
            read.remove(i).with_context(|| {
                format!(
                    "{}: the loader skipped row {}",
                    dir.display(),
                    meta[*i].image_id
                )
            })
        })
        .collect()
}

/// Each strategy's candidate set `[n, N]` (bool) and final mask `[n, N]`
/// (1 = masked) for the rows, with `settings` but for the strategy.
fn strategy_masks(
    session: &Session,
    rows: &[Sampled],
    seed: u64,
    settings: &AttMimConfig,
) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
    let _guard = tch::no_grad_guard();
    let device = session.vs.device();
    let n = rows.len() as i64;
    let pixels: Vec<f32> = rows.iter().flat_map(|r| r.pixels.iter().copied()).collect();
    let side = session.run.mmclip.clip.vision.image_size;
    let pixels = fit_to(
        &Tensor::from_slice(&pixels)
            .view([n, 3, IMAGE_SIZE as i64, IMAGE_SIZE as i64])
            .to_device(device),
        side,
    );
    let ids: Vec<i64> = rows.iter().flat_map(|r| r.tokens.iter().copied()).collect();
    let ids = Tensor::from_slice(&ids)
        .view([n, CONTEXT as i64])
        .to_device(device);
    let image = session.model.clip.encode_image(&pixels);
    let report = session.model.clip.encode_text(&ids);
    Ok(STRATEGIES
        .iter()
        .map(|&strategy| {
            let settings = AttMimConfig {
                strategy,
                ..settings.clone()
            };
            let (candidates, selection) =
                session
                    .model
                    .select_mask(&image, Some(&report), &ids, seed, Some(&settings));
            (
                candidates.to_device(Device::Cpu),
                selection.mask.to_device(Device::Cpu),
            )
        })
        .unzip())
}

/// Lesion boxes of a written image mapped into the 224-px centre crop.
fn crop_boxes(line: Option<&LesionLine>) -> Vec<[f64; 4]> {
    let Some(l) = line else { return Vec::new() };
    let (w, h) = (l.width as f64, l.height as f64);
    let m = w.min(h);
    let (ox, oy, s) = ((w - m) / 2.0, (h - m) / 2.0, IMAGE_SIZE as f64 / m);
    l.lesions
        .iter()
        .map(|b| {
            let [x0, y0, x1, y1] = b.bbox;
            [(x0 - ox) * s, (y0 - oy) * s, (x1 - ox) * s, (y1 - oy) * s]
                .map(|v| v.clamp(0.0, IMAGE_SIZE as f64))
        })
        .filter(|b| b[2] > b[0] && b[3] > b[1])
        .collect()
}

/// Patches (row-major on the grid) overlapping any box.
fn lesion_patches(boxes: &[[f64; 4]], n_side: usize) -> Vec<usize> {
    let p = IMAGE_SIZE as f64 / n_side as f64;
    let mut out = Vec::new();
    for gy in 0..n_side {
        for gx in 0..n_side {
            let (x0, y0) = (gx as f64 * p, gy as f64 * p);
            if boxes
                .iter()
                .any(|b| b[0] < x0 + p && b[2] > x0 && b[1] < y0 + p && b[3] > y0)
            {
                out.push(gy * n_side + gx);
            }
        }
    }
    out
}

/// Images with lesion patches, their lesion patches, and the share of them
/// each strategy's mask covers.
fn lesion_shares(
    masks: &[Tensor],
    boxes: &[Vec<[f64; 4]>],
    n_side: usize,
) -> (usize, usize, Vec<(MaskStrategy, f64)>) {
    let patches: Vec<Vec<usize>> = boxes.iter().map(|b| lesion_patches(b, n_side)).collect();
    let total: usize = patches.iter().map(Vec::len).sum();
    let shares = STRATEGIES
        .iter()
        .zip(masks)
        .map(|(s, m)| {
            let hit: usize = patches
                .iter()
                .enumerate()
                .map(|(i, ps)| {
                    ps.iter()
                        .filter(|&&p| m.double_value(&[i as i64, p as i64]) > 0.5)
                        .count()
                })
                .sum();
            (
                *s,
                if total == 0 {
                    f64::NAN
                } else {
                    hit as f64 / total as f64
                },
            )
        })
        .collect();
    let images = patches.iter().filter(|p| !p.is_empty()).count();
    (images, total, shares)
}

/// One picture row: the image (lesions outlined) and each strategy's mask.
fn draw_row(
    pixels: &[f32],
    masks: &[Tensor],
    i: usize,
    n_side: usize,
    boxes: &[[f64; 4]],
) -> RgbImage {
    let s = IMAGE_SIZE as u32;
    let gap = 4;
    let mut out = RgbImage::from_pixel(
        (s + gap) * (1 + masks.len() as u32) - gap,
        s,
        Rgb([255, 255, 255]),
    );
    // Undo CLIP's normalisation of channel 0 for display.
    let gray = |x: u32, y: u32| {
        let v = pixels[(y * s + x) as usize] * pipeline::CLIP_STD[0] + pipeline::CLIP_MEAN[0];
        (v.clamp(0.0, 1.0) * 255.0) as u8
    };
    let patch = s as f64 / n_side as f64;
    for (col, mask) in std::iter::once(None)
        .chain(masks.iter().map(Some))
        .enumerate()
    {
        let x_base = col as u32 * (s + gap);
        for y in 0..s {
            for x in 0..s {
                let g = gray(x, y);
                let masked = mask.is_some_and(|m| {
                    let k = (y as f64 / patch) as i64 * n_side as i64 + (x as f64 / patch) as i64;
                    m.double_value(&[i as i64, k]) > 0.5
                });
                let px = if masked {
                    Rgb([g / 3 + 150, g / 3, g / 3])
                } else {
                    Rgb([g, g, g])
                };
                out.put_pixel(x_base + x, y, px);
            }
        }
        for b in boxes {
            outline(&mut out, x_base, b);
        }
    }
    out
}

fn outline(img: &mut RgbImage, x_base: u32, b: &[f64; 4]) {
    let s = IMAGE_SIZE as u32;
    let (x0, y0) = (b[0] as u32, b[1] as u32);
    let (x1, y1) = ((b[2] as u32).min(s - 1), (b[3] as u32).min(s - 1));
    let green = Rgb([40, 220, 40]);
    for x in x0..=x1 {
        img.put_pixel(x_base + x, y0, green);
        img.put_pixel(x_base + x, y1, green);
    }
    for y in y0..=y1 {
        img.put_pixel(x_base + x0, y, green);
        img.put_pixel(x_base + x1, y, green);
    }
}
