//! Image to network input: crop, resize, jitter and normalise in one pass.
//!
//! Every geometric step (random resized crop, small rotation, optional flip,
//! or the evaluation's resize + centre crop) is one affine map from output
//! pixels to source pixels, so the 8-bit image is sampled once, bilinearly,
//! straight into the `3×224×224` float output. Pixels outside the source
//! read as black (0), as torchvision's affine fill does.
//!
//! The output has three channels: the grey value replicated, each channel
//! normalised with CLIP's own mean and std, because the CLIP image encoder
//! was trained on exactly that input. Writing three floats per pixel costs
//! little next to the bilinear sample, and keeps the model a plain CLIP.
//!
//! Bilinear sampling does not low-pass: a crop much larger than 224 pixels
//! aliases. Ingest stores a 256-pixel short side, so a crop is at most about
//! 1.2× the output and this does not arise with the defaults.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Output side in pixels.
pub const IMAGE_SIZE: usize = 224;
/// Output channels.
pub const CHANNELS: usize = 3;
/// Floats per output image.
pub const IMAGE_FLOATS: usize = CHANNELS * IMAGE_SIZE * IMAGE_SIZE;
/// CLIP's per-channel mean (RGB), on values in [0, 1].
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel std (RGB).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Training or evaluation transforms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Random augmentation from [`AugmentConfig`].
    #[default]
    Train,
    /// Deterministic: resize the short side to 224, then centre crop.
    Eval,
}

/// Training augmentation. Each part is off at zero (or `false`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AugmentConfig {
    /// Random resized crop; when off, training uses the evaluation crop.
    pub random_resized_crop: bool,
    /// Crop area as a share of the image area, sampled uniformly in this range.
    pub crop_scale: (f32, f32),
    /// Crop aspect ratio (width / height), sampled log-uniformly in this range.
    pub crop_ratio: (f32, f32),
    /// Rotation, uniform in ±this many degrees, about the crop centre.
    pub rotate_degrees: f32,
    /// Contrast factor uniform in `1 ± contrast` (around mid grey).
    pub contrast: f32,
    /// Brightness offset uniform in `± brightness` (values in [0, 1]).
    pub brightness: f32,
    /// Probability of a horizontal flip. Off by default: the heart is on the
    /// left, and a flipped chest film is a different (rare) anatomy.
    pub hflip: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            random_resized_crop: true,
            crop_scale: (0.5, 1.0),
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            rotate_degrees: 5.0,
            contrast: 0.1,
            brightness: 0.1,
            hflip: 0.0,
        }
    }
}

impl AugmentConfig {
    /// Every augmentation off: training then gives the evaluation crop.
    pub fn none() -> Self {
        AugmentConfig {
            random_resized_crop: false,
            rotate_degrees: 0.0,
            contrast: 0.0,
            brightness: 0.0,
            hflip: 0.0,
            ..Default::default()
        }
    }
}

/// The sampled transform of one image.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Transform {
    /// Crop centre and size in source pixels.
    cx: f32,
    cy: f32,
    cw: f32,
    ch: f32,
    angle: f32,
    flip: bool,
    contrast: f32,
    brightness: f32,
}

fn centre_crop(w: f32, h: f32) -> (f32, f32, f32, f32) {
    let side = w.min(h);
    (w / 2.0, h / 2.0, side, side)
}

fn sample_transform(w: usize, h: usize, mode: Mode, cfg: &AugmentConfig, key: u64) -> Transform {
    let (w, h) = (w as f32, h as f32);
    let (cx, cy, cw, ch) = centre_crop(w, h);
    let mut t = Transform {
        cx,
        cy,
        cw,
        ch,
        angle: 0.0,
        flip: false,
        contrast: 1.0,
        brightness: 0.0,
    };
    if mode == Mode::Eval {
        return t;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(key);
    if cfg.random_resized_crop {
        // torchvision's RandomResizedCrop: ten tries at a crop that fits,
        // then the centre crop.
        let area = w * h;
        let (lr0, lr1) = (cfg.crop_ratio.0.ln(), cfg.crop_ratio.1.ln());
        for _ in 0..10 {
            let target = area * rng.random_range(cfg.crop_scale.0..=cfg.crop_scale.1);
            let ratio = if lr1 > lr0 {
                rng.random_range(lr0..lr1).exp()
            } else {
                cfg.crop_ratio.0
            };
            let (cw, ch) = ((target * ratio).sqrt(), (target / ratio).sqrt());
            if cw <= w && ch <= h && cw >= 1.0 && ch >= 1.0 {
                t.cx = rng.random_range(0.0..=(w - cw)) + cw / 2.0;
                t.cy = rng.random_range(0.0..=(h - ch)) + ch / 2.0;
                t.cw = cw;
                t.ch = ch;
                break;
            }
        }
    }
    if cfg.rotate_degrees > 0.0 {
        t.angle = rng
            .random_range(-cfg.rotate_degrees..=cfg.rotate_degrees)
            .to_radians();
    }
    if cfg.hflip > 0.0 {
        t.flip = rng.random::<f32>() < cfg.hflip;
    }
    if cfg.contrast > 0.0 {
        t.contrast = rng.random_range(1.0 - cfg.contrast..=1.0 + cfg.contrast);
    }
    if cfg.brightness > 0.0 {
        t.brightness = rng.random_range(-cfg.brightness..=cfg.brightness);
    }
    t
}

/// Renders `pixels` (`h × w`, 8-bit, row-major) into `out`
/// (`[3, 224, 224]`, CLIP-normalised) with the transform drawn from `key`.
pub fn render(
    pixels: &[u8],
    w: usize,
    h: usize,
    mode: Mode,
    cfg: &AugmentConfig,
    key: u64,
    out: &mut [f32],
) {
    assert_eq!(out.len(), IMAGE_FLOATS, "output holds one 3×224×224 image");
    assert_eq!(pixels.len(), w * h, "pixels hold h × w bytes");
    let t = sample_transform(w, h, mode, cfg, key);
    // value(p) = ((p/255 - 0.5)·c + 0.5 + b) clamped to [0, 1], then per
    // channel (v - mean)/std: fold the first step into one multiply-add.
    let gain = t.contrast / 255.0;
    let offset = 0.5 - 0.5 * t.contrast + t.brightness;
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / CLIP_STD[c]);
    let shift: [f32; 3] = std::array::from_fn(|c| -CLIP_MEAN[c] / CLIP_STD[c]);

    let n = IMAGE_SIZE as f32;
    let (sin, cos) = t.angle.sin_cos();
    // Output pixel (u, v) centre → offset from the crop centre, in source
    // pixels: d = ((u+0.5)/n - 0.5)·cw, then rotated; source pixel centres
    // sit at integer + 0.5, hence the final -0.5.
    let fx = if t.flip { -1.0 } else { 1.0 };
    let step_x = t.cw / n * fx;
    let step_y = t.ch / n;
    let (plane0, rest) = out.split_at_mut(IMAGE_SIZE * IMAGE_SIZE);
    let (plane1, plane2) = rest.split_at_mut(IMAGE_SIZE * IMAGE_SIZE);
    let (wi, hi) = (w as isize, h as isize);
    let px = |x: isize, y: isize| -> f32 {
        if x < 0 || y < 0 || x >= wi || y >= hi {
            0.0
        } else {
            pixels[(y * wi + x) as usize] as f32
        }
    };
    for v in 0..IMAGE_SIZE {
        let dy = (v as f32 + 0.5 - n / 2.0) * step_y;
        let dx0 = (0.5 - n / 2.0) * step_x;
        let mut sx = t.cx + cos * dx0 - sin * dy - 0.5;
        let mut sy = t.cy + sin * dx0 + cos * dy - 0.5;
        let (ix, iy) = (cos * step_x, sin * step_x);
        let row = v * IMAGE_SIZE;
        for u in 0..IMAGE_SIZE {
            // Truncation is the floor for the non-negative coordinates of
            // the interior; `floor` (a libm call on the baseline x86-64
            // target) is left to the border.
            let (x, y) = (sx as isize, sy as isize);
            let p = if sx >= 0.0 && sy >= 0.0 && x + 1 < wi && y + 1 < hi {
                let (ax, ay) = (sx - x as f32, sy - y as f32);
                let i = y as usize * w + x as usize;
                let (top, bottom) = (&pixels[i..i + 2], &pixels[i + w..i + w + 2]);
                let (a, b) = (top[0] as f32, top[1] as f32);
                let (c, d) = (bottom[0] as f32, bottom[1] as f32);
                let top = a + (b - a) * ax;
                top + (c + (d - c) * ax - top) * ay
            } else {
                let (x0, y0) = (sx.floor(), sy.floor());
                let (ax, ay) = (sx - x0, sy - y0);
                let (x, y) = (x0 as isize, y0 as isize);
                let top = px(x, y) + (px(x + 1, y) - px(x, y)) * ax;
                let bottom = px(x, y + 1) + (px(x + 1, y + 1) - px(x, y + 1)) * ax;
                top + (bottom - top) * ay
            };
            let value = (p * gain + offset).clamp(0.0, 1.0);
            plane0[row + u] = value * scale[0] + shift[0];
            plane1[row + u] = value * scale[1] + shift[1];
            plane2[row + u] = value * scale[2] + shift[2];
            sx += ix;
            sy += iy;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> Vec<u8> {
        (0..w * h)
            .map(|i| ((i % w) * 255 / (w - 1)) as u8)
            .collect()
    }

    fn bounds(c: usize) -> (f32, f32) {
        (
            (0.0 - CLIP_MEAN[c]) / CLIP_STD[c],
            (1.0 - CLIP_MEAN[c]) / CLIP_STD[c],
        )
    }

    #[test]
    fn training_augmentation_keeps_shape_and_value_range() {
        let (w, h) = (300, 256);
        let px = gradient(w, h);
        let cfg = AugmentConfig {
            hflip: 0.5,
            rotate_degrees: 10.0,
            ..Default::default()
        };
        let mut out = vec![f32::NAN; IMAGE_FLOATS];
        let mut distinct = std::collections::HashSet::new();
        for key in 0..20 {
            out.fill(f32::NAN);
            render(&px, w, h, Mode::Train, &cfg, key, &mut out);
            for c in 0..3 {
                let (lo, hi) = bounds(c);
                let plane = &out[c * IMAGE_SIZE * IMAGE_SIZE..(c + 1) * IMAGE_SIZE * IMAGE_SIZE];
                assert!(
                    plane
                        .iter()
                        .all(|v| v.is_finite() && *v >= lo - 1e-5 && *v <= hi + 1e-5),
                    "key {key} channel {c}"
                );
            }
            distinct.insert(out.iter().map(|v| v.to_bits() as u64).sum::<u64>());
        }
        assert!(
            distinct.len() > 15,
            "augmentation barely varies: {} distinct of 20",
            distinct.len()
        );
    }

    #[test]
    fn eval_is_deterministic_and_a_centre_crop() {
        let (w, h) = (280, 224);
        let px = gradient(w, h);
        let mut a = vec![0.0; IMAGE_FLOATS];
        let mut b = vec![0.0; IMAGE_FLOATS];
        render(&px, w, h, Mode::Eval, &AugmentConfig::default(), 1, &mut a);
        render(&px, w, h, Mode::Eval, &AugmentConfig::default(), 2, &mut b);
        assert_eq!(a, b, "eval output depends on the key");
        // A 224-high image: the centre crop is exact pixels 28..252 of each row.
        let norm = |p: u8| (p as f32 / 255.0 - CLIP_MEAN[0]) / CLIP_STD[0];
        for u in [0usize, 100, 223] {
            assert!(
                (a[u] - norm(px[28 + u])).abs() < 1e-4,
                "column {u}: {} vs {}",
                a[u],
                norm(px[28 + u])
            );
        }
    }

    #[test]
    fn no_flip_by_default_and_flip_mirrors() {
        let (w, h) = (224, 224);
        let px = gradient(w, h);
        let mut out = vec![0.0; IMAGE_FLOATS];
        let cfg = AugmentConfig {
            hflip: 1.0,
            ..AugmentConfig::none()
        };
        render(&px, w, h, Mode::Train, &cfg, 0, &mut out);
        assert!(
            out[0] > out[IMAGE_SIZE - 1],
            "flip did not mirror the gradient"
        );
        assert_eq!(AugmentConfig::default().hflip, 0.0);
        render(&px, w, h, Mode::Train, &AugmentConfig::none(), 0, &mut out);
        assert!(out[0] < out[IMAGE_SIZE - 1]);
    }

    /// Bilinear sample of `pixels` at `(sx, sy)` in pixel-centre coordinates
    /// minus one half, zero outside: the textbook formula, with `floor`.
    fn reference_sample(pixels: &[u8], w: usize, h: usize, sx: f32, sy: f32) -> f32 {
        let px = |x: f32, y: f32| -> f32 {
            if x < 0.0 || y < 0.0 || x >= w as f32 || y >= h as f32 {
                0.0
            } else {
                pixels[y as usize * w + x as usize] as f32
            }
        };
        let (x0, y0) = (sx.floor(), sy.floor());
        let (ax, ay) = (sx - x0, sy - y0);
        let top = px(x0, y0) * (1.0 - ax) + px(x0 + 1.0, y0) * ax;
        let bottom = px(x0, y0 + 1.0) * (1.0 - ax) + px(x0 + 1.0, y0 + 1.0) * ax;
        top * (1.0 - ay) + bottom * ay
    }

    #[test]
    fn sampling_matches_a_floor_based_bilinear_inside_and_across_the_border() {
        // Noise, so a sample off by a pixel differs by much more than the
        // rounding of the incremental coordinates.
        let (w, h) = (257, 230);
        let px: Vec<u8> = (0..w * h)
            .map(|i| (crate::order::mix64(i as u64) % 256) as u8)
            .collect();
        // Large crops rotated by up to 20° reach past the image's edges,
        // where truncation and floor differ.
        let cfg = AugmentConfig {
            crop_scale: (0.9, 1.0),
            crop_ratio: (0.5, 2.0),
            rotate_degrees: 20.0,
            contrast: 0.0,
            brightness: 0.0,
            ..Default::default()
        };
        let mut out = vec![0.0; IMAGE_FLOATS];
        let mut border = 0;
        for key in 0..8 {
            render(&px, w, h, Mode::Train, &cfg, key, &mut out);
            let t = sample_transform(w, h, Mode::Train, &cfg, key);
            let n = IMAGE_SIZE as f32;
            let (sin, cos) = t.angle.sin_cos();
            for v in 0..IMAGE_SIZE {
                for u in 0..IMAGE_SIZE {
                    let dx = (u as f32 + 0.5 - n / 2.0) * t.cw / n;
                    let dy = (v as f32 + 0.5 - n / 2.0) * t.ch / n;
                    let sx = t.cx + cos * dx - sin * dy - 0.5;
                    let sy = t.cy + sin * dx + cos * dy - 0.5;
                    border += usize::from(sx < 1.0 || sy < 1.0);
                    let want =
                        (reference_sample(&px, w, h, sx, sy) / 255.0 - CLIP_MEAN[0]) / CLIP_STD[0];
                    let got = out[v * IMAGE_SIZE + u];
                    assert!(
                        (got - want).abs() < 2e-2,
                        "key {key} pixel ({u}, {v}) at ({sx}, {sy}): {got} vs {want}"
                    );
                }
            }
        }
        assert!(
            border > 1000,
            "only {border} samples near the top or left edge"
        );
    }
}
