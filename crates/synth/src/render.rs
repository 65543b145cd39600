//! A cheap chest-radiograph phantom with findings drawn at known places.
//!
//! The renderer works in "density" units (0 = air, ~0.55 = soft tissue,
//! ~0.8 = bone or metal; bright = dense, the MONOCHROME2 convention) on a
//! normalised grid: `u` runs across the columns, `v` down the rows, both in
//! [0, 1]. Frontal views are drawn as displayed: the patient's right lung is
//! on the image's left. Each finding is either a change of the anatomy
//! (cardiomegaly enlarges the heart, pneumothorax removes lung markings) or
//! an additive density (fluid, blobs, tubes). Every lesion's bounding box is
//! measured from the pixels it actually changed, so `lesions.jsonl` never
//! points at a place that looks normal.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Which kind of projection the phantom is drawn as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum View {
    /// PA or AP: two lung fields side by side.
    Frontal,
    /// Lateral: one superimposed lung field, heart anterior (image left).
    Lateral,
}

/// One lung (or, on a lateral, the lung field) as a deformed ellipse.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lung {
    pub cx: f32,
    pub cy: f32,
    pub rx: f32,
    pub ry: f32,
}

impl Lung {
    /// A shape value: < 1 inside, 1 on the pleural edge. Narrower at the apex
    /// so the field looks like a lung rather than an egg.
    #[inline]
    pub fn q(&self, u: f32, v: f32) -> f32 {
        let dy = (v - self.cy) / self.ry;
        let taper = 0.62 + 0.38 * ((dy + 1.0) / 1.5).clamp(0.0, 1.0);
        let dx = (u - self.cx) / (self.rx * taper);
        dx * dx + dy * dy
    }
}

/// The patient: per-study shape parameters, shared by all views of a study.
#[derive(Clone, Debug)]
pub(crate) struct Anatomy {
    pub right: Lung,
    pub left: Lung,
    pub lateral: Lung,
    pub heart: (f32, f32, f32, f32),
    pub heart_lat: (f32, f32, f32, f32),
    pub med_half_width: f32,
    pub rib_period: f32,
    pub rib_phase: f32,
    pub tissue: f32,
    pub lung_density: f32,
}

impl Anatomy {
    /// A plausible adult chest with some per-patient variation.
    pub fn random(rng: &mut ChaCha8Rng) -> Anatomy {
        let j = |rng: &mut ChaCha8Rng, s: f32| rng.random_range(-s..s);
        let ry = 0.3 + j(rng, 0.02);
        let cy = 0.47 + j(rng, 0.02);
        Anatomy {
            right: Lung {
                cx: 0.3 + j(rng, 0.015),
                cy,
                rx: 0.16 + j(rng, 0.01),
                ry,
            },
            left: Lung {
                cx: 0.7 + j(rng, 0.015),
                cy: cy + 0.01,
                rx: 0.155 + j(rng, 0.01),
                ry: ry - 0.01,
            },
            lateral: Lung {
                cx: 0.52 + j(rng, 0.02),
                cy: cy + 0.01,
                rx: 0.29 + j(rng, 0.02),
                ry: ry + 0.02,
            },
            heart: (
                0.555 + j(rng, 0.01),
                0.6 + j(rng, 0.015),
                0.13 + j(rng, 0.01),
                0.1 + j(rng, 0.01),
            ),
            heart_lat: (
                0.37 + j(rng, 0.02),
                0.62 + j(rng, 0.015),
                0.15 + j(rng, 0.01),
                0.13 + j(rng, 0.01),
            ),
            med_half_width: 0.055 + j(rng, 0.008),
            rib_period: 0.075 + j(rng, 0.006),
            rib_phase: rng.random_range(0.0..1.0),
            tissue: 0.55 + j(rng, 0.04),
            lung_density: 0.2 + j(rng, 0.03),
        }
    }
}

/// The drawable form of a finding, in normalised coordinates.
#[derive(Clone, Debug)]
pub(crate) enum Shape {
    /// Fluid filling a lung base up to `level` (fraction of lung height), with
    /// a meniscus rising laterally. `left` is the patient's left.
    Effusion { left: bool, level: f32 },
    /// The heart silhouette scaled by `scale`.
    Cardiomegaly { scale: f32 },
    /// The upper mediastinum widened by `scale`.
    Mediastinum { scale: f32 },
    /// A lung-apex pneumothorax: a rim of `depth` (fraction of the lung
    /// radius) without markings, bounded by a thin pleural line.
    Pneumothorax { left: bool, depth: f32 },
    /// A soft blob: consolidation, opacity, nodule. `sharp` near 1 gives a
    /// well-defined edge (nodule), near 0 a hazy one; `patchy` mixes in noise.
    Blob {
        cx: f32,
        cy: f32,
        rx: f32,
        ry: f32,
        peak: f32,
        sharp: f32,
        patchy: f32,
    },
    /// A bright thin polyline: tubes and catheters (`width` in normalised units).
    Tube { points: Vec<(f32, f32)>, width: f32 },
    /// Bilateral perihilar haze centred on the hila.
    Edema { spread: f32 },
    /// A band (plate-like atelectasis) between two points.
    Band {
        a: (f32, f32),
        b: (f32, f32),
        half: f32,
        peak: f32,
    },
    /// Thickened pleura along the lateral wall of one lung.
    Thickening { left: bool, thick: f32 },
}

/// One finding to draw: the CheXpert class index it illustrates, its shape,
/// and an amplitude (1 for a positive mention, less for an uncertain one).
#[derive(Clone, Debug)]
pub(crate) struct Lesion {
    pub class: usize,
    pub shape: Shape,
    pub amp: f32,
}

/// A rendered density image with the measured box of each lesion
/// (`[x0, y0, x1, y1]`, pixel coordinates, `x1`/`y1` exclusive; `None` if
/// the lesion changed no pixel noticeably).
pub(crate) struct Rendered {
    pub density: Vec<f32>,
    pub boxes: Vec<Option<[u32; 4]>>,
}

#[inline]
fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Integer hash to a uniform value in [-1, 1]: per-pixel noise without a
/// sequential generator, so rows can be drawn in any order.
#[inline]
fn hash_unit(seed: u64, i: u64) -> f32 {
    let mut x = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Smooth value noise on a coarse grid: lung markings and lesion texture.
struct ValueNoise {
    n: usize,
    grid: Vec<f32>,
}

impl ValueNoise {
    fn new(seed: u64, n: usize) -> ValueNoise {
        let grid = (0..(n + 1) * (n + 1))
            .map(|i| hash_unit(seed, i as u64))
            .collect();
        ValueNoise { n, grid }
    }
    #[inline]
    fn at(&self, u: f32, v: f32) -> f32 {
        let n = self.n as f32;
        let x = (u.clamp(0.0, 0.9999)) * n;
        let y = (v.clamp(0.0, 0.9999)) * n;
        let (xi, yi) = (x as usize, y as usize);
        let (fx, fy) = (x - xi as f32, y - yi as f32);
        let w = self.n + 1;
        let g = |a: usize, b: usize| self.grid[b * w + a];
        let top = g(xi, yi) * (1.0 - fx) + g(xi + 1, yi) * fx;
        let bot = g(xi, yi + 1) * (1.0 - fx) + g(xi + 1, yi + 1) * fx;
        top * (1.0 - fy) + bot * fy
    }
}

fn ellipse_q(h: (f32, f32, f32, f32), scale: f32, u: f32, v: f32) -> f32 {
    let dx = (u - h.0) / (h.2 * scale);
    // The heart grows mostly sideways and down; its top stays at the hila.
    let dy = (v - h.1 - (scale - 1.0) * h.3 * 0.3) / (h.3 * (1.0 + (scale - 1.0) * 0.6));
    dx * dx + dy * dy
}

fn seg_dist(p: (f32, f32), a: (f32, f32), b: (f32, f32), aspect: f32) -> f32 {
    // Distances in units of image height: u is scaled by the aspect ratio.
    let (px, py) = (p.0 * aspect, p.1);
    let (ax, ay) = (a.0 * aspect, a.1);
    let (bx, by) = (b.0 * aspect, b.1);
    let (dx, dy) = (bx - ax, by - ay);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (qx, qy) = (ax + t * dx - px, ay + t * dy - py);
    (qx * qx + qy * qy).sqrt()
}

struct BoxAcc {
    b: [u32; 4],
    any: bool,
}

impl BoxAcc {
    fn new() -> BoxAcc {
        BoxAcc {
            b: [u32::MAX, u32::MAX, 0, 0],
            any: false,
        }
    }
    #[inline]
    fn add(&mut self, x: usize, y: usize) {
        let (x, y) = (x as u32, y as u32);
        self.b[0] = self.b[0].min(x);
        self.b[1] = self.b[1].min(y);
        self.b[2] = self.b[2].max(x + 1);
        self.b[3] = self.b[3].max(y + 1);
        self.any = true;
    }
    fn get(&self) -> Option<[u32; 4]> {
        self.any.then_some(self.b)
    }
}

/// Threshold (density units) above which a lesion counts as having changed a
/// pixel: about 1% of the display range, well above rounding, below noise.
const VISIBLE: f32 = 0.02;

/// Draws one image. `noise_seed` fixes the texture and noise, so the same
/// seed with and without lesions gives two images that differ only where the
/// lesions are (what the lesion test relies on).
pub(crate) fn render(
    anat: &Anatomy,
    view: View,
    lesions: &[Lesion],
    width: usize,
    height: usize,
    noise_seed: u64,
) -> Rendered {
    let mut density = vec![0f32; width * height];
    let mut boxes: Vec<BoxAcc> = lesions.iter().map(|_| BoxAcc::new()).collect();
    let markings = ValueNoise::new(noise_seed ^ 0x11, 28);
    let fine = ValueNoise::new(noise_seed ^ 0x22, 64);
    let aspect = width as f32 / height as f32;

    // Global changes of the anatomy.
    let mut heart_scale = 1.0f32;
    let mut med_scale = 1.0f32;
    let mut ptx: Option<(usize, bool, f32, f32)> = None;
    for (i, l) in lesions.iter().enumerate() {
        match l.shape {
            Shape::Cardiomegaly { scale } => {
                heart_scale = 1.0 + (scale - 1.0) * l.amp;
            }
            Shape::Mediastinum { scale } => med_scale = 1.0 + (scale - 1.0) * l.amp,
            Shape::Pneumothorax { left, depth } => ptx = Some((i, left, depth, l.amp)),
            _ => {}
        }
    }
    let cardio_idx = lesions
        .iter()
        .position(|l| matches!(l.shape, Shape::Cardiomegaly { .. }));
    let med_idx = lesions
        .iter()
        .position(|l| matches!(l.shape, Shape::Mediastinum { .. }));

    let (hw, hh) = (width as f32, height as f32);
    for y in 0..height {
        let v = (y as f32 + 0.5) / hh;
        for x in 0..width {
            let u = (x as f32 + 0.5) / hw;
            let idx = y * width + x;
            // Body outline: an ellipse, air outside.
            let bq = ((u - 0.5) / 0.48).powi(4) + ((v - 0.6) / 0.62).powi(2);
            let body = smoothstep(1.05, 0.95, bq);
            let mut d = 0.04 + body * (anat.tissue - 0.04);
            let mark = markings.at(u, v) * 0.5 + fine.at(u, v) * 0.5;
            match view {
                View::Frontal => {
                    let qr = anat.right.q(u, v);
                    let ql = anat.left.q(u, v);
                    let lr = smoothstep(1.0, 0.86, qr);
                    let ll = smoothstep(1.0, 0.86, ql);
                    let lung = lr.max(ll);
                    // Markings fade towards the periphery, strongest at the hila.
                    let q = if lr > ll { qr } else { ql };
                    let mut mk = 0.07 * mark * (1.2 - q.min(1.0)) + 0.03 * (1.0 - q.min(1.0));
                    let mut lung_d = anat.lung_density;
                    if let Some((pi, left, depth, amp)) = ptx {
                        let (lq, on) = if left { (ql, ll > 0.0) } else { (qr, lr > 0.0) };
                        let lg = if left { &anat.left } else { &anat.right };
                        let edge = (1.0 - depth).powi(2);
                        if on && v < lg.cy + 0.1 * lg.ry && lq > edge {
                            let w = smoothstep(edge, edge + 0.02, lq) * amp;
                            mk *= 1.0 - w;
                            lung_d -= 0.14 * w;
                            if w > 0.3 {
                                boxes[pi].add(x, y);
                            }
                        }
                        // The visceral pleural line at the collapsed lung's edge.
                        let line = (-((lq - edge) / 0.012).powi(2)).exp() * amp;
                        if on && v < lg.cy + 0.1 * lg.ry && line > 0.05 {
                            mk += 0.12 * line;
                        }
                    }
                    d = d * (1.0 - lung) + (lung_d + mk) * lung;
                    // Mediastinum: a central band, wider with med_scale above the heart.
                    let top_w = anat.med_half_width * (0.75 + 0.25 * v / 0.5);
                    let mw = |s: f32| if v < 0.56 { top_w * s } else { top_w };
                    let med_edge = |s: f32| {
                        smoothstep(mw(s), mw(s) * 0.8, (u - 0.5).abs()) * smoothstep(0.05, 0.12, v)
                    };
                    let med = med_edge(med_scale);
                    if med_scale != 1.0
                        && let Some(mi) = med_idx
                        && (med - med_edge(1.0)).abs() * 0.5 > VISIBLE
                    {
                        boxes[mi].add(x, y);
                    }
                    d = d * (1.0 - med) + 0.72 * med;
                    // Trachea: a dark air column in the upper mediastinum.
                    let tr = smoothstep(0.014, 0.009, (u - 0.5).abs()) * smoothstep(0.36, 0.3, v);
                    d -= 0.18 * tr;
                    let hq = ellipse_q(anat.heart, heart_scale, u, v);
                    let heart = smoothstep(1.0, 0.9, hq);
                    if heart_scale != 1.0
                        && let Some(ci) = cardio_idx
                    {
                        let h0 = smoothstep(1.0, 0.9, ellipse_q(anat.heart, 1.0, u, v));
                        if (heart - h0) * 0.4 > VISIBLE {
                            boxes[ci].add(x, y);
                        }
                    }
                    d = d * (1.0 - 0.85 * heart) + 0.72 * 0.85 * heart;
                    // Spine, faint through the mediastinum, with vertebral bands.
                    let sp = smoothstep(0.035, 0.028, (u - 0.5).abs());
                    d += sp * (0.05 + 0.02 * (v * 40.0).sin());
                    // Posterior ribs: curved bands, faint, over the thorax.
                    let lat = (u - 0.5).abs();
                    let rv = (v - 0.1 - 0.6 * lat * lat + 0.25 * lat
                        - anat.rib_phase * anat.rib_period)
                        / anat.rib_period;
                    let rib = smoothstep(0.55, 0.8, (rv * std::f32::consts::TAU).cos() * 0.5 + 0.5);
                    let thorax = smoothstep(1.15, 0.95, qr.min(ql));
                    d += 0.035 * rib * thorax * (0.4 + 0.6 * lung);
                    // Clavicles.
                    let cl = seg_dist((u, v), (0.45, 0.17), (0.18, 0.1), aspect).min(seg_dist(
                        (u, v),
                        (0.55, 0.17),
                        (0.82, 0.1),
                        aspect,
                    ));
                    d += 0.1 * smoothstep(0.018, 0.01, cl);
                }
                View::Lateral => {
                    let lq = anat.lateral.q(1.0 - u, v);
                    let lung = smoothstep(1.0, 0.85, lq);
                    let mk = 0.06 * mark * (1.2 - lq.min(1.0));
                    d = d * (1.0 - lung) + (anat.lung_density + 0.04 + mk) * lung;
                    let hq = ellipse_q(anat.heart_lat, heart_scale, u, v);
                    let heart = smoothstep(1.0, 0.9, hq);
                    if heart_scale != 1.0
                        && let Some(ci) = cardio_idx
                    {
                        let h0 = smoothstep(1.0, 0.9, ellipse_q(anat.heart_lat, 1.0, u, v));
                        if (heart - h0) * 0.3 > VISIBLE {
                            boxes[ci].add(x, y);
                        }
                    }
                    d = d * (1.0 - 0.6 * heart) + 0.6 * heart * 0.68;
                    // Spine posteriorly (image right), with vertebral bodies.
                    let sp = smoothstep(0.06, 0.045, (u - 0.8 + 0.05 * (v - 0.5)).abs());
                    d += sp * (0.15 + 0.05 * (v * 35.0).sin());
                }
            }
            // Quantum noise: two hashes for a rounder distribution.
            let n = hash_unit(noise_seed, idx as u64) + hash_unit(noise_seed ^ 0xABCD, idx as u64);
            d += 0.012 * n;
            density[idx] = d;
        }
    }

    for (i, l) in lesions.iter().enumerate() {
        draw_additive(
            l,
            anat,
            view,
            &mut density,
            width,
            height,
            aspect,
            &fine,
            &mut boxes[i],
        );
    }

    // A lead marker: saturated, so min-max scaling is not a good window.
    let (mx, my) = ((0.06 * hw) as usize, (0.05 * hh) as usize);
    let ms = ((0.035 * hh) as usize).max(2);
    for y in my..(my + ms).min(height) {
        for x in mx..(mx + ms * 2 / 3).min(width) {
            density[y * width + x] = 1.0;
        }
    }

    Rendered {
        density,
        boxes: boxes.iter().map(BoxAcc::get).collect(),
    }
}

/// Draws a density-adding lesion over the pixels of its analytic extent.
#[allow(clippy::too_many_arguments)]
fn draw_additive(
    l: &Lesion,
    anat: &Anatomy,
    view: View,
    density: &mut [f32],
    width: usize,
    height: usize,
    aspect: f32,
    tex: &ValueNoise,
    acc: &mut BoxAcc,
) {
    let (hw, hh) = (width as f32, height as f32);
    // Analytic extent in normalised units (u0, v0, u1, v1); pixels outside
    // get nothing, which keeps the per-lesion cost proportional to its size.
    let ext = match &l.shape {
        Shape::Effusion { left, .. } => {
            let lg = lung_of(anat, view, *left);
            let (c, rx) = if view == View::Lateral {
                (1.0 - lg.cx, lg.rx)
            } else {
                (lg.cx, lg.rx)
            };
            (c - rx * 1.1, lg.cy, c + rx * 1.1, lg.cy + lg.ry * 1.1)
        }
        Shape::Blob { cx, cy, rx, ry, .. } => {
            (cx - rx * 1.2, cy - ry * 1.2, cx + rx * 1.2, cy + ry * 1.2)
        }
        Shape::Tube { points, width: w } => {
            let (mut a, mut b, mut c, mut d) = (1f32, 1f32, 0f32, 0f32);
            for p in points {
                a = a.min(p.0);
                b = b.min(p.1);
                c = c.max(p.0);
                d = d.max(p.1);
            }
            (a - w * 2.0, b - w * 2.0, c + w * 2.0, d + w * 2.0)
        }
        Shape::Edema { spread } => match view {
            View::Frontal => (0.15, 0.25, 0.85, 0.3 + spread * 2.2),
            View::Lateral => (0.25, 0.25, 0.75, 0.3 + spread * 2.2),
        },
        Shape::Band { a, b, half, .. } => (
            a.0.min(b.0) - half * 3.0,
            a.1.min(b.1) - half * 3.0,
            a.0.max(b.0) + half * 3.0,
            a.1.max(b.1) + half * 3.0,
        ),
        Shape::Thickening { left, .. } => {
            let lg = lung_of(anat, view, *left);
            (
                lg.cx - lg.rx * 1.05,
                lg.cy - lg.ry * 1.05,
                lg.cx + lg.rx * 1.05,
                lg.cy + lg.ry * 0.6,
            )
        }
        Shape::Cardiomegaly { .. } | Shape::Mediastinum { .. } | Shape::Pneumothorax { .. } => {
            return;
        }
    };
    let x0 = ((ext.0.max(0.0)) * hw) as usize;
    let x1 = (((ext.2.min(1.0)) * hw).ceil() as usize).min(width);
    let y0 = ((ext.1.max(0.0)) * hh) as usize;
    let y1 = (((ext.3.min(1.0)) * hh).ceil() as usize).min(height);
    for y in y0..y1 {
        let v = (y as f32 + 0.5) / hh;
        for x in x0..x1 {
            let u = (x as f32 + 0.5) / hw;
            let add = match &l.shape {
                Shape::Effusion { left, level } => {
                    let lg = lung_of(anat, view, *left);
                    let (q, lateral) = match view {
                        View::Frontal => {
                            let s = if *left { 1.0 } else { -1.0 };
                            (lg.q(u, v), ((u - lg.cx) / lg.rx * s).clamp(0.0, 1.0))
                        }
                        // On a lateral the fluid collects posteriorly (image right).
                        View::Lateral => (
                            lg.q(1.0 - u, v),
                            ((u - (1.0 - lg.cx)) / lg.rx).clamp(0.0, 1.0),
                        ),
                    };
                    let surface =
                        lg.cy + lg.ry * (1.0 - 2.0 * level) - 0.35 * lg.ry * lateral * lateral;
                    let fluid =
                        smoothstep(surface - 0.01, surface + 0.025, v) * smoothstep(1.0, 0.86, q);
                    0.4 * fluid
                }
                Shape::Blob {
                    cx,
                    cy,
                    rx,
                    ry,
                    peak,
                    sharp,
                    patchy,
                } => {
                    let r2 = ((u - cx) / rx).powi(2) + ((v - cy) / ry).powi(2);
                    let r = r2.sqrt() + 0.25 * patchy * tex.at(u * 1.7, v * 1.7);
                    let inner = 1.0 - 0.9 * sharp;
                    let m = smoothstep(1.0, inner.min(0.95), r);
                    let t = 1.0 + patchy * 0.6 * tex.at(u * 3.1 + 0.3, v * 3.1);
                    peak * m * t.max(0.0)
                }
                Shape::Tube { points, width: w } => {
                    let mut dmin = f32::MAX;
                    for s in points.windows(2) {
                        dmin = dmin.min(seg_dist((u, v), s[0], s[1], aspect));
                    }
                    // A radio-opaque stripe: bright walls, slightly less bright lumen.
                    let wall = smoothstep(*w, w * 0.55, dmin);
                    0.45 * wall - 0.1 * smoothstep(w * 0.35, 0.0, dmin)
                }
                Shape::Edema { spread } => {
                    let hila: &[(f32, f32)] = match view {
                        View::Frontal => &[(0.38, 0.45), (0.62, 0.45)],
                        View::Lateral => &[(0.5, 0.45)],
                    };
                    let mut h = 0.0f32;
                    for &(hx, hy) in hila {
                        let r2 = ((u - hx) / (spread * 0.9)).powi(2)
                            + ((v - hy) / (spread * 1.3)).powi(2);
                        h = h.max((-r2).exp());
                    }
                    let in_lung = match view {
                        View::Frontal => {
                            smoothstep(1.0, 0.8, anat.right.q(u, v).min(anat.left.q(u, v)))
                        }
                        View::Lateral => smoothstep(1.0, 0.8, anat.lateral.q(1.0 - u, v)),
                    };
                    0.24 * h * in_lung * (1.0 + 0.4 * tex.at(u * 2.3, v * 2.3))
                }
                Shape::Band { a, b, half, peak } => {
                    let d = seg_dist((u, v), *a, *b, aspect);
                    peak * smoothstep(*half, half * 0.4, d)
                }
                Shape::Thickening { left, thick } => {
                    let lg = lung_of(anat, view, *left);
                    let q = lg.q(u, v);
                    let s = if *left { 1.0 } else { -1.0 };
                    let lateral = ((u - lg.cx) / lg.rx * s).max(-0.2);
                    let rim = smoothstep(
                        (1.0 - thick).powi(2) - 0.02,
                        (1.0 - thick).powi(2) + 0.02,
                        q,
                    ) * smoothstep(1.08, 0.98, q);
                    0.3 * rim * smoothstep(-0.2, 0.3, lateral.max((lg.cy - v) / lg.ry))
                }
                _ => 0.0,
            } * l.amp;
            if add.abs() > 0.0 {
                density[y * width + x] += add;
                if add > VISIBLE {
                    acc.add(x, y);
                }
            }
        }
    }
}

fn lung_of(anat: &Anatomy, view: View, left: bool) -> &Lung {
    match view {
        View::Lateral => &anat.lateral,
        View::Frontal if left => &anat.left,
        View::Frontal => &anat.right,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn lesion_box_is_brighter_than_lesion_free_rendering() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let anat = Anatomy::random(&mut rng);
        let les = vec![Lesion {
            class: 9,
            shape: Shape::Effusion {
                left: false,
                level: 0.35,
            },
            amp: 1.0,
        }];
        let a = render(&anat, View::Frontal, &les, 128, 128, 7);
        let b = render(&anat, View::Frontal, &[], 128, 128, 7);
        let bb = a.boxes[0].expect("effusion visible");
        let mut diff = 0.0;
        let mut n = 0.0;
        for y in bb[1]..bb[3] {
            for x in bb[0]..bb[2] {
                let i = y as usize * 128 + x as usize;
                diff += a.density[i] - b.density[i];
                n += 1.0;
            }
        }
        assert!(diff / n > 0.1, "mean difference {}", diff / n);
    }
}
