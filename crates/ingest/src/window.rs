//! Turns stored pixel values into the 8-bit image that is stored, and
//! resizes it once.
//!
//! [`render`] applies, in DICOM order: the modality rescale (when asked), the
//! window policy (a map from values to 0..=255), histogram equalisation for
//! [`WindowPolicy::MimicJpg`], and finally the inversion of MONOCHROME1 /
//! INVERSE images so that bone is bright in every stored image.
//! [`resize_short_side`] then brings the short side to the configured size.
//!
//! Every policy is a monotone function of the value, so it is evaluated once
//! per distinct stored value (a lookup table over `min..=max`) rather than
//! per pixel, and percentiles come from a histogram rather than a sort: a
//! 3000×2500 radiograph has at most 65,536 distinct values. For 8- and
//! 16-bit stored words (every radiograph) that table is composed with the
//! word's mask and sign into one table indexed by the word itself, so the
//! full-size image is read twice (histogram, then map) and nothing
//! full-size is allocated but the 8-bit result.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use schemas::WindowPolicy;

use crate::dicom_image::{SampleFormat, Samples, StoredImage, VoiLut};

/// An 8-bit grayscale image, row-major, `width * height` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gray8 {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Row-major pixels.
    pub pixels: Vec<u8>,
}

/// Largest `max - min` for which a lookup table over all values is built;
/// wider ranges (not produced by any real radiograph) are mapped per pixel.
const MAX_LUT_RANGE: i64 = 1 << 20;

/// Render stored values to 8 bits by `window`.
///
/// - `rescale`: apply RescaleSlope/Intercept first (when the image has them);
/// - `window`: see [`WindowPolicy`]; `Voi` prefers the VOI LUT over the
///   window, as `pydicom` and `dicom-pixeldata` do, and falls back to
///   min–max when the image has neither;
/// - `invert_monochrome1`: invert MONOCHROME1 and PresentationLUTShape
///   INVERSE images at the end. Both together invert once, not twice: the
///   DX Image Module (PS3.3 C.8.11.7) requires PresentationLUTShape INVERSE
///   exactly when the image is MONOCHROME1 ("output after inversion is in
///   P-Values"), so the two attributes state one fact, and the DX chest of
///   the test corpus, which carries both, is only right side up that way.
///
/// `img.pixels.len()` must be `width * height`; an empty image gives an
/// empty result. Never panics on any values.
pub fn render(
    img: &StoredImage,
    window: WindowPolicy,
    rescale: bool,
    invert_monochrome1: bool,
) -> Gray8 {
    let steps = Steps {
        img,
        window,
        affine: Affine::of(img, rescale),
        equalize: matches!(window, WindowPolicy::MimicJpg),
        invert: invert_monochrome1 && img.displays_inverted(),
    };
    let pixels = match &img.pixels {
        Samples::U8(words, format) => steps.render_words(words, *format),
        Samples::U16(words, format) => steps.render_words(words, *format),
        Samples::I32(values) => steps.render_values(values),
    };
    Gray8 {
        width: img.width,
        height: img.height,
        pixels,
    }
}

/// What [`render`] does to one image, resolved from its arguments.
struct Steps<'a> {
    img: &'a StoredImage,
    window: WindowPolicy,
    affine: Affine,
    equalize: bool,
    invert: bool,
}

impl Steps<'_> {
    /// 8- or 16-bit words (every radiograph): one pass builds the histogram
    /// of the words, from which the value histogram, the policy's table and
    /// the equalisation follow at the cost of the number of *possible*
    /// words; a second pass maps each word through one table that composes
    /// the word's masking and sign, the rescale, the window, the
    /// equalisation and the inversion. No full-size intermediate buffer.
    fn render_words<W: Word>(&self, words: &[W], format: SampleFormat) -> Vec<u8> {
        let word_hist = word_histogram(words);
        let Some(values) = Values::from_word_histogram(&word_hist[..], format) else {
            return Vec::new();
        };
        let Some(table) = self.value_table(&values) else {
            // Not reached (word values are always binned), but total.
            let values_of = words.iter().map(|&w| format.value(w.into()));
            return self.render_each(&values, values_of);
        };
        // Words absent from the image never reach the table: 0 for them.
        let mut word_table = Box::new([0u8; WORDS]);
        for (word, &n) in word_hist.iter().enumerate() {
            if n > 0 {
                word_table[word] = table[(format.value(word as u32) - values.min) as usize];
            }
        }
        words.iter().map(|&w| word_table[w.index()]).collect()
    }

    /// Values of any range (32-bit data, JPEG 2000): through the table when
    /// the range allows one, else value by value.
    fn render_values(&self, pixels: &[i32]) -> Vec<u8> {
        let Some(values) = Values::new(pixels) else {
            return Vec::new();
        };
        match self.value_table(&values) {
            Some(table) => pixels
                .iter()
                .map(|&v| table[(v - values.min) as usize])
                .collect(),
            None => self.render_each(&values, pixels.iter().copied()),
        }
    }

    /// The output byte of each value `values.min + i`: the policy's map,
    /// then equalisation (computed from the value histogram, so the image
    /// is not read again) and inversion composed into it. `None` when the
    /// values are not binned.
    fn value_table(&self, values: &Values) -> Option<Vec<u8>> {
        let Spread::Histogram(hist) = &values.spread else {
            return None;
        };
        let map = ValueMap::new(self.img, self.window, self.affine, values);
        let mut table: Vec<u8> = (values.min..=values.max)
            .map(|s| map.eval(self.affine.apply(s)))
            .collect();
        let mut post: [u8; 256] = std::array::from_fn(|i| i as u8);
        if self.equalize {
            let mut hist8 = [0usize; 256];
            for (&out, &n) in table.iter().zip(hist) {
                hist8[usize::from(out)] += n as usize;
            }
            post = equalize_lut(&hist8);
        }
        if self.invert {
            post.iter_mut().for_each(|v| *v = 255 - *v);
        }
        table.iter_mut().for_each(|v| *v = post[usize::from(*v)]);
        Some(table)
    }

    /// Value by value, for ranges too wide for a table.
    fn render_each(&self, values: &Values, pixels: impl Iterator<Item = i32>) -> Vec<u8> {
        let map = ValueMap::new(self.img, self.window, self.affine, values);
        let mut out: Vec<u8> = pixels.map(|s| map.eval(self.affine.apply(s))).collect();
        if self.equalize {
            equalize_hist(&mut out);
        }
        if self.invert {
            out.iter_mut().for_each(|v| *v = 255 - *v);
        }
        out
    }
}

/// Size of a table indexed by any 8- or 16-bit word. Fixed, so that
/// indexing it with a [`Word`] needs no bounds check in the per-pixel loops.
const WORDS: usize = 1 << 16;

/// A stored word (8 or 16 bits): it indexes a table of [`WORDS`] entries.
trait Word: Copy + Into<u16> + Into<u32> {
    /// The word as a table index, `< WORDS`.
    fn index(self) -> usize {
        usize::from(Into::<u16>::into(self))
    }
}

impl Word for u8 {}

impl Word for u16 {}

/// How many times each possible word occurs.
fn word_histogram<W: Word>(words: &[W]) -> Box<[u32; WORDS]> {
    let mut hist = Box::new([0u32; WORDS]);
    for &w in words {
        hist[w.index()] += 1;
    }
    hist
}

/// The modality LUT as `slope * v + intercept` (identity when not asked).
#[derive(Debug, Clone, Copy)]
struct Affine {
    slope: f64,
    intercept: f64,
}

impl Affine {
    fn of(img: &StoredImage, rescale: bool) -> Self {
        match img.rescale {
            Some((slope, intercept)) if rescale && slope.is_finite() && intercept.is_finite() => {
                Affine { slope, intercept }
            }
            _ => Affine {
                slope: 1.0,
                intercept: 0.0,
            },
        }
    }

    fn apply(self, v: i32) -> f64 {
        self.slope * f64::from(v) + self.intercept
    }

    fn apply_f(self, v: f64) -> f64 {
        self.slope * v + self.intercept
    }
}

/// The value distribution of an image: its range, and how the values
/// spread over it.
struct Values<'a> {
    min: i32,
    max: i32,
    count: usize,
    spread: Spread<'a>,
}

/// The values themselves, binned when their range allows.
enum Spread<'a> {
    /// `counts[i]` counts value `min + i`.
    Histogram(Vec<u32>),
    /// A range too wide for a histogram: the pixels, for order statistics.
    Unbinned(&'a [i32]),
}

impl<'a> Values<'a> {
    /// The distribution of `pixels`; `None` when there are none.
    fn new(pixels: &'a [i32]) -> Option<Self> {
        let first = *pixels.first()?;
        let (min, max) = pixels
            .iter()
            .fold((first, first), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let range = i64::from(max) - i64::from(min);
        let spread = if range < MAX_LUT_RANGE {
            let mut h = vec![0u32; range as usize + 1];
            for &v in pixels {
                h[(v - min) as usize] += 1;
            }
            Spread::Histogram(h)
        } else {
            Spread::Unbinned(pixels)
        };
        Some(Values {
            min,
            max,
            count: pixels.len(),
            spread,
        })
    }

    /// The distribution of the values of words counted in `word_hist`
    /// (word `w` occurring `word_hist[w]` times); `None` when there are
    /// none. At most 65,536 distinct words, so always binned.
    fn from_word_histogram(word_hist: &[u32], format: SampleFormat) -> Option<Values<'static>> {
        let present = || {
            word_hist
                .iter()
                .enumerate()
                .filter(|&(_, &n)| n > 0)
                .map(|(w, &n)| (format.value(w as u32), n))
        };
        let (min, max) = present().fold(None, |acc, (v, _)| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((v.min(lo), v.max(hi))),
        })?;
        let mut h = vec![0u32; (i64::from(max) - i64::from(min)) as usize + 1];
        let mut count = 0usize;
        for (v, n) in present() {
            h[(v - min) as usize] += n;
            count += n as usize;
        }
        Some(Values {
            min,
            max,
            count,
            spread: Spread::Histogram(h),
        })
    }

    /// The k-th smallest value (0-based, `k < count`).
    fn kth(&self, k: usize) -> i32 {
        match &self.spread {
            Spread::Histogram(h) => {
                let mut seen = 0usize;
                for (i, &n) in h.iter().enumerate() {
                    seen += n as usize;
                    if seen > k {
                        return self.min + i as i32;
                    }
                }
                self.max
            }
            Spread::Unbinned(pixels) => {
                let mut copy = pixels.to_vec();
                let k = k.min(copy.len() - 1);
                *copy.select_nth_unstable(k).1
            }
        }
    }

    /// Percentile `q` (0..=100) of the stored values with linear
    /// interpolation between neighbours, as NumPy's default `percentile`.
    fn percentile(&self, q: f64) -> f64 {
        let pos = (q.clamp(0.0, 100.0) / 100.0) * (self.count - 1) as f64;
        let lo = pos.floor() as usize;
        let frac = pos - lo as f64;
        let a = f64::from(self.kth(lo));
        if frac == 0.0 || lo + 1 >= self.count {
            return a;
        }
        let b = f64::from(self.kth(lo + 1));
        a + frac * (b - a)
    }
}

/// A policy resolved for one image: a monotone map from (rescaled) values
/// to 0..=255.
enum ValueMap<'a> {
    /// Linear from `[lo, hi]` to `[0, 255]`, rounded down (NumPy's
    /// `astype(uint8)` after scaling, the common min–max idiom).
    MinMax { lo: f64, hi: f64 },
    /// PS3.3 C.11.2.1.2.1 linear window.
    Window { center: f64, width: f64 },
    /// PS3.3 C.11.2.1.1 VOI LUT.
    Lut(&'a VoiLut),
    /// Clip to `[lo, hi]`, then linear to `[0, 255]`, rounded.
    Clip { lo: f64, hi: f64 },
}

impl<'a> ValueMap<'a> {
    fn new(img: &'a StoredImage, window: WindowPolicy, affine: Affine, values: &Values) -> Self {
        let (a, b) = (affine.apply(values.min), affine.apply(values.max));
        let min_max = ValueMap::MinMax {
            lo: a.min(b),
            hi: a.max(b),
        };
        match window {
            WindowPolicy::MimicJpg => min_max,
            WindowPolicy::Voi => match (&img.voi_lut, img.voi_window) {
                (Some(lut), _) => ValueMap::Lut(lut),
                (None, Some((center, width))) => ValueMap::Window { center, width },
                (None, None) => min_max,
            },
            WindowPolicy::Percentile { low, high } => {
                // The rescale is monotone: percentiles of rescaled values are
                // rescaled percentiles, taken from the other end when the
                // slope is negative.
                let (low, high) = (f64::from(low), f64::from(high));
                let (ql, qh) = if affine.slope < 0.0 {
                    (100.0 - low, 100.0 - high)
                } else {
                    (low, high)
                };
                let lo = affine.apply_f(values.percentile(ql));
                let hi = affine.apply_f(values.percentile(qh));
                ValueMap::Clip {
                    lo: lo.min(hi),
                    hi: lo.max(hi),
                }
            }
        }
    }

    fn eval(&self, x: f64) -> u8 {
        match *self {
            ValueMap::MinMax { lo, hi } => {
                if hi > lo {
                    to_u8(((x - lo) / (hi - lo) * 255.0).floor())
                } else {
                    0
                }
            }
            ValueMap::Window { center, width } => to_u8(linear_window(x, center, width).round()),
            ValueMap::Lut(lut) => voi_lut(lut, x),
            ValueMap::Clip { lo, hi } => {
                if hi > lo {
                    to_u8(((x - lo) / (hi - lo) * 255.0).round())
                } else if x > lo {
                    255
                } else {
                    0
                }
            }
        }
    }
}

/// Clamp to 0..=255 and convert; NaN becomes 0.
fn to_u8(v: f64) -> u8 {
    if v.is_nan() {
        0
    } else {
        v.clamp(0.0, 255.0) as u8
    }
}

/// DICOM PS3.3 C.11.2.1.2.1, VOI LUT Function LINEAR, output range 0..=255:
/// - `x <= c - 0.5 - (w - 1) / 2` gives 0,
/// - `x > c - 0.5 + (w - 1) / 2` gives 255,
/// - otherwise `((x - (c - 0.5)) / (w - 1) + 0.5) * 255`.
///
/// The standard requires `w >= 1`; for `w < 1` (only possible from a
/// damaged header) the window is a threshold at `c - 0.5`.
fn linear_window(x: f64, center: f64, width: f64) -> f64 {
    if width < 1.0 || (width - 1.0).abs() < f64::EPSILON {
        return if x > center - 0.5 { 255.0 } else { 0.0 };
    }
    let half = (width - 1.0) / 2.0;
    if x <= center - 0.5 - half {
        0.0
    } else if x > center - 0.5 + half {
        255.0
    } else {
        ((x - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    }
}

/// Look `x` up in the VOI LUT (clamped to the table's ends) and scale the
/// entry from `0..2^bits` to 0..=255.
fn voi_lut(lut: &VoiLut, x: f64) -> u8 {
    let last = lut.data.len().saturating_sub(1);
    let index = (x.round() - f64::from(lut.first_mapped)).clamp(0.0, last as f64) as usize;
    let entry = lut.data.get(index).copied().unwrap_or(0);
    let top = ((1u32 << lut.bits.min(16)) - 1) as f64;
    to_u8((f64::from(entry) / top * 255.0).round())
}

/// OpenCV's `cv::equalizeHist` (imgproc/src/histogram.cpp), exactly:
/// with `hist` the 256-bin histogram, `i0` the smallest value present and
/// `total` the pixel count,
///
/// ```text
/// if hist[i0] == total: every pixel = i0
/// scale = 255f32 / (total - hist[i0]) as f32
/// lut[i0] = 0
/// lut[i] = saturate_cast<uchar>((hist[i0+1] + ... + hist[i]) as f32 * scale)   for i > i0
/// ```
///
/// i.e. the CDF minus the count of the darkest value, scaled to 255, in
/// single precision and rounded half to even (`cvRound`).
fn equalize_hist(pixels: &mut [u8]) {
    let mut hist = [0usize; 256];
    for &v in pixels.iter() {
        hist[usize::from(v)] += 1;
    }
    let lut = equalize_lut(&hist);
    pixels.iter_mut().for_each(|v| *v = lut[usize::from(*v)]);
}

/// The table of [`equalize_hist`] for an image with histogram `hist`.
fn equalize_lut(hist: &[usize; 256]) -> [u8; 256] {
    let total: usize = hist.iter().sum();
    let identity: [u8; 256] = std::array::from_fn(|i| i as u8);
    let Some(i0) = hist.iter().position(|&n| n > 0) else {
        return identity; // empty image
    };
    if hist[i0] == total {
        return identity; // constant image: OpenCV leaves it as it is
    }
    let scale = 255.0f32 / (total - hist[i0]) as f32;
    let mut lut = [0u8; 256];
    let mut sum = 0usize;
    for i in i0 + 1..256 {
        sum += hist[i];
        lut[i] = (sum as f32 * scale).round_ties_even().clamp(0.0, 255.0) as u8;
    }
    lut
}

/// Resize so the short side is exactly `short_side`, keeping the aspect
/// ratio (long side rounded to the nearest pixel).
///
/// Small images are upscaled too, so every stored image has the configured
/// short side and the loader never meets an odd size. Lanczos3 convolution
/// (`fast_image_resize` widens the kernel by the scale factor when
/// downscaling, so it is antialiased). An empty image, a zero
/// `short_side` or a pixel buffer of the wrong length gives a 0×0 image.
pub fn resize_short_side(img: &Gray8, short_side: u32) -> Gray8 {
    let (w, h) = (img.width, img.height);
    let empty = Gray8 {
        width: 0,
        height: 0,
        pixels: Vec::new(),
    };
    if w == 0 || h == 0 || short_side == 0 || img.pixels.len() != w as usize * h as usize {
        return empty;
    }
    let (nw, nh) = target_size(w, h, short_side);
    if (nw, nh) == (w, h) {
        return img.clone();
    }
    // Both sizes are non-zero and the buffer length was checked above, the
    // only conditions under which these calls fail.
    let src = ImageRef::new(w, h, &img.pixels, PixelType::U8).expect("buffer length checked");
    let mut dst = Image::new(nw, nh, PixelType::U8);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .expect("sizes checked");
    Gray8 {
        width: nw,
        height: nh,
        pixels: dst.into_vec(),
    }
}

/// `(width, height)` with the short side `short_side` and the long side
/// scaled by the same factor, rounded, at least 1.
fn target_size(w: u32, h: u32, short_side: u32) -> (u32, u32) {
    let scale = |long: u32, short: u32| -> u32 {
        let v = (u64::from(long) * u64::from(short_side) + u64::from(short) / 2) / u64::from(short);
        v.clamp(1, u64::from(u32::MAX)) as u32
    };
    if w <= h {
        (short_side, scale(h, w))
    } else {
        (scale(w, h), short_side)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: u32, height: u32, pixels: Vec<i32>) -> StoredImage {
        StoredImage::monochrome2(width, height, 16, pixels)
    }

    fn render_plain(img: &StoredImage, window: WindowPolicy) -> Vec<u8> {
        render(img, window, true, true).pixels
    }

    #[test]
    fn fused_table_equals_window_then_equalise_then_invert_pixel_by_pixel() {
        // A 12-bit MONOCHROME1 image with pseudo-random values.
        let mut x = 12345u32;
        let pixels: Vec<i32> = (0..64 * 48)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                ((x >> 16) % 4096) as i32
            })
            .collect();
        let mut img = StoredImage::monochrome2(64, 48, 12, pixels.clone());
        img.photometric = "MONOCHROME1".into();
        let (min, max) = (*pixels.iter().min().unwrap(), *pixels.iter().max().unwrap());
        let mut want: Vec<u8> = pixels
            .iter()
            .map(|&v| (f64::from(v - min) / f64::from(max - min) * 255.0).floor() as u8)
            .collect();
        equalize_hist(&mut want);
        want.iter_mut().for_each(|v| *v = 255 - *v);
        assert_eq!(
            render(&img, WindowPolicy::MimicJpg, true, true).pixels,
            want
        );
    }

    #[test]
    fn words_render_as_their_values_do() {
        // Words with overlay bits above BitsStored, signed and unsigned, 8
        // and 16 bits, through every policy, rescaled and inverted: the
        // word path must give the bytes of the value path, pixel for pixel.
        let mut x = 99u32;
        let mut next = || {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            x >> 8
        };
        let words16: Vec<u16> = (0..40 * 30).map(|_| next() as u16).collect();
        let words8: Vec<u8> = (0..40 * 30).map(|_| next() as u8).collect();
        let policies = [
            WindowPolicy::MimicJpg,
            WindowPolicy::Voi,
            WindowPolicy::Percentile {
                low: 1.0,
                high: 97.5,
            },
        ];
        let formats = [(12, false), (12, true), (16, false), (16, true), (7, true)];
        for (bits, signed) in formats {
            let format = SampleFormat { bits, signed };
            for words in [
                Samples::U16(words16.clone(), format),
                Samples::U8(words8.clone(), format),
            ] {
                let mut img = StoredImage::monochrome2(40, 30, bits, words);
                img.photometric = "MONOCHROME1".into();
                img.rescale = Some((-2.0, 7.0));
                img.voi_window = Some((100.0, 900.0));
                let as_values = StoredImage {
                    pixels: Samples::I32(img.pixels.values()),
                    ..img.clone()
                };
                for policy in policies {
                    assert_eq!(
                        render(&img, policy, true, true),
                        render(&as_values, policy, true, true),
                        "{policy:?}, {bits} bits, signed {signed}"
                    );
                }
            }
        }
    }

    #[test]
    fn mimic_policy_is_min_max_then_opencv_equalisation() {
        // Min–max: 0 -> 0, 10 -> floor(127.5) = 127, 20 -> 255.
        // Equalise: hist {0:1, 127:2, 255:1}, scale 255/3 = 85:
        // lut[0] = 0, lut[127] = 2 * 85 = 170, lut[255] = 3 * 85 = 255.
        let img = image(2, 2, vec![0, 10, 10, 20]);
        assert_eq!(
            render_plain(&img, WindowPolicy::MimicJpg),
            vec![0, 170, 170, 255]
        );
    }

    #[test]
    fn equalisation_rounds_half_to_even_like_cv_round() {
        // 103 pixels: one at 0, one at 50 (-> 127), 101 at 100 (-> 255).
        // scale = 255 / 102 = 2.5; lut[127] = cvRound(2.5) = 2 (half-up would give 3).
        let mut px = vec![0, 50];
        px.extend(std::iter::repeat_n(100, 101));
        let out = render_plain(&image(103, 1, px), WindowPolicy::MimicJpg);
        assert_eq!(&out[..3], &[0, 2, 255]);
    }

    #[test]
    fn min_max_uses_rescaled_values() {
        // Slope -1 flips the order: min–max on rescaled values, then equalise.
        let mut img = image(3, 1, vec![0, 5, 10]);
        img.rescale = Some((-1.0, 0.0));
        assert_eq!(
            render_plain(&img, WindowPolicy::MimicJpg),
            vec![255, 128, 0]
        );
        assert_eq!(
            render(&img, WindowPolicy::MimicJpg, false, true).pixels,
            vec![0, 128, 255]
        );
    }

    #[test]
    fn voi_window_follows_the_dicom_linear_formula() {
        // c = 100, w = 21: below 89.5 -> 0, above 109.5 -> 255, else
        // ((x - 99.5) / 20 + 0.5) * 255: 95 -> 70.125, 100 -> 133.875, 109 -> 248.625.
        let mut img = image(7, 1, vec![89, 90, 95, 100, 109, 110, 200]);
        img.voi_window = Some((100.0, 21.0));
        let out = render_plain(&img, WindowPolicy::Voi);
        assert_eq!(out, vec![0, 6, 70, 134, 249, 255, 255]);
        // The rescale is applied first: 2 * 50 + 0 = 100 -> 134.
        img.rescale = Some((2.0, 0.0));
        img.pixels = vec![50; 7].into();
        assert_eq!(render_plain(&img, WindowPolicy::Voi), vec![134; 7]);
    }

    #[test]
    fn voi_lut_is_preferred_and_clamped_at_its_ends() {
        let mut img = image(4, 1, vec![5, 10, 11, 20]);
        img.voi_window = Some((0.0, 1.0));
        img.voi_lut = Some(VoiLut {
            first_mapped: 10,
            bits: 8,
            data: vec![0, 100, 255],
        });
        assert_eq!(render_plain(&img, WindowPolicy::Voi), vec![0, 0, 100, 255]);
    }

    #[test]
    fn voi_without_window_falls_back_to_min_max() {
        let img = image(3, 1, vec![0, 50, 100]);
        assert_eq!(render_plain(&img, WindowPolicy::Voi), vec![0, 127, 255]);
    }

    #[test]
    fn percentile_policy_clips_to_numpy_percentiles() {
        // Values 0..=100: p10 = 10, p90 = 90 -> linear between them.
        let img = image(101, 1, (0..=100).collect());
        let out = render_plain(
            &img,
            WindowPolicy::Percentile {
                low: 10.0,
                high: 90.0,
            },
        );
        assert_eq!(out[0], 0);
        assert_eq!(out[10], 0);
        assert_eq!(out[50], 128); // 40 / 80 * 255 = 127.5, rounded
        assert_eq!(out[90], 255);
        assert_eq!(out[100], 255);
        // Interpolated: values {0, 10}: p25 = 2.5, p75 = 7.5; 5 of 0..=10 maps to 127.5 -> 128.
        let v = Values::new(&[0, 10]).expect("non-empty");
        assert_eq!(v.percentile(25.0), 2.5);
        assert_eq!(v.percentile(75.0), 7.5);
    }

    #[test]
    fn percentiles_agree_with_and_without_histogram() {
        let px: Vec<i32> = (0..1000).map(|i| (i * 7919) % 1013 - 500).collect();
        let with = Values::new(&px).expect("non-empty");
        let without = Values {
            spread: Spread::Unbinned(&px),
            ..Values::new(&px).expect("non-empty")
        };
        for q in [0.0, 0.5, 12.3, 50.0, 99.5, 100.0] {
            assert_eq!(with.percentile(q), without.percentile(q), "q = {q}");
        }
    }

    #[test]
    fn monochrome1_and_inverse_invert_once() {
        let base = image(3, 1, vec![0, 50, 100]);
        let plain = render_plain(&base, WindowPolicy::Voi);
        let inverted: Vec<u8> = plain.iter().map(|v| 255 - v).collect();

        let mono1 = StoredImage {
            photometric: "MONOCHROME1".into(),
            ..base.clone()
        };
        let inverse = StoredImage {
            inverse_lut: true,
            ..base.clone()
        };
        let both = StoredImage {
            inverse_lut: true,
            ..mono1.clone()
        };
        assert_eq!(render_plain(&mono1, WindowPolicy::Voi), inverted);
        assert_eq!(render_plain(&inverse, WindowPolicy::Voi), inverted);
        assert_eq!(render_plain(&both, WindowPolicy::Voi), inverted);
        assert_eq!(render(&both, WindowPolicy::Voi, true, false).pixels, plain);
    }

    #[test]
    fn constant_tiny_empty_and_extreme_images_do_not_panic() {
        let policies = [
            WindowPolicy::MimicJpg,
            WindowPolicy::Voi,
            WindowPolicy::Percentile {
                low: 0.5,
                high: 99.5,
            },
        ];
        for policy in policies {
            let constant = render_plain(&image(4, 4, vec![700; 16]), policy);
            assert!(constant.iter().all(|&v| v == constant[0]), "{policy:?}");
            assert_eq!(render_plain(&image(1, 1, vec![3]), policy).len(), 1);
            assert!(render_plain(&image(0, 0, vec![]), policy).is_empty());
            let wide = render_plain(&image(3, 1, vec![i32::MIN, 0, i32::MAX]), policy);
            assert_eq!(wide.len(), 3);
            assert!(
                wide[0] <= wide[1] && wide[1] <= wide[2],
                "{policy:?}: {wide:?}"
            );
        }
        let mut odd = image(2, 1, vec![0, 1]);
        odd.voi_window = Some((f64::NAN, 0.0));
        odd.rescale = Some((f64::INFINITY, 0.0));
        assert_eq!(render_plain(&odd, WindowPolicy::Voi).len(), 2);
    }

    #[test]
    fn resize_keeps_aspect_and_exact_short_side() {
        let img = Gray8 {
            width: 400,
            height: 300,
            pixels: vec![9; 400 * 300],
        };
        let out = resize_short_side(&img, 256);
        assert_eq!((out.width, out.height), (341, 256)); // 400 * 256 / 300 = 341.3
        assert_eq!(out.pixels.len(), 341 * 256);
        assert!(
            out.pixels.iter().all(|&v| v == 9),
            "a constant image stays constant"
        );

        let tall = Gray8 {
            width: 10,
            height: 20,
            pixels: vec![0; 200],
        };
        let up = resize_short_side(&tall, 256);
        assert_eq!(
            (up.width, up.height),
            (256, 512),
            "small images are upscaled"
        );

        let dot = Gray8 {
            width: 1,
            height: 1,
            pixels: vec![77],
        };
        let out = resize_short_side(&dot, 256);
        assert_eq!((out.width, out.height), (256, 256));
        assert!(out.pixels.iter().all(|&v| v == 77));

        let same = Gray8 {
            width: 256,
            height: 300,
            pixels: vec![1; 256 * 300],
        };
        assert_eq!(resize_short_side(&same, 256), same);
        let empty = Gray8 {
            width: 0,
            height: 5,
            pixels: vec![],
        };
        assert_eq!(resize_short_side(&empty, 256).pixels.len(), 0);
    }

    #[test]
    fn resize_antialiases_fine_stripes() {
        // One-pixel stripes 0/255 downscaled 4x average to mid-grey, not aliased.
        let (w, h) = (1024, 1024);
        let pixels = (0..w * h)
            .map(|i| if (i % w) % 2 == 0 { 0 } else { 255 })
            .collect();
        let out = resize_short_side(
            &Gray8 {
                width: w as u32,
                height: h as u32,
                pixels,
            },
            256,
        );
        let inner = &out.pixels[256 * 128 + 8..256 * 128 + 248];
        assert!(inner.iter().all(|&v| (120..=135).contains(&v)), "{inner:?}");
    }
}
