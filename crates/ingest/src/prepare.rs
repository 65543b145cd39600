//! From an image file on disk to the stored 8-bit image: decode, window,
//! resize once, encode. One function per input kind, all returning the same
//! [`Prepared`] or a reject reason.
//!
//! Each checks the size its file declares against the policy's limits
//! ([`ImagePolicy::refuses_size`]) before decoding the pixels: the resize keeps
//! the aspect ratio, so a 2 × 65535 strip would otherwise become a
//! 256 × 8,388,480 image, and a 1 × 1 image a flat 256 × 256 one.

use std::path::Path;

use schemas::{ImagePolicy, Reject, Stage};

use crate::dicom_image::{self, SampleFormat, Samples, StoredImage};
use crate::encode;
use crate::shard::{Outcome, Row};
use crate::window::{self, Gray8};

/// An image ready for its row.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Encoded pixels for the `image` column.
    pub bytes: Vec<u8>,
    /// Stored width.
    pub width: u32,
    /// Stored height.
    pub height: u32,
    /// Original rows.
    pub orig_rows: u32,
    /// Original columns.
    pub orig_cols: u32,
    /// Bits stored in the original.
    pub bits_stored: u16,
    /// Photometric interpretation of the original.
    pub photometric: String,
    /// The DICOM's ViewPosition (`PA`, `AP`, `LATERAL`, ...) when it records
    /// one; PNG and JPEG files carry no view.
    pub view: Option<String>,
}

impl Prepared {
    /// The row with this image and its facts filled in.
    pub fn into_row(self, row: Row) -> Row {
        Row {
            image: self.bytes,
            image_height: self.height as i32,
            image_width: self.width as i32,
            orig_rows: self.orig_rows as i32,
            orig_cols: self.orig_cols as i32,
            bits_stored: i32::from(self.bits_stored),
            photometric: self.photometric,
            ..row
        }
    }
}

/// Why an image was not written: the stage and a reason a person can act on.
pub type Failure = (Stage, String);

/// What becomes of an image-only row (the downstream releases): `row` with
/// its prepared image, or a reject of the image file `path` that carries
/// the row's patient, study and image ids.
pub fn image_row(path: &Path, prepared: Result<Prepared, Failure>, row: Row) -> Outcome {
    match prepared {
        Ok(img) => Outcome::Row(Box::new(img.into_row(row))),
        Err((stage, reason)) => Outcome::Rejected(Box::new(Reject {
            path: path.display().to_string(),
            subject_id: Some(row.subject_id),
            study_id: Some(row.study_id),
            image_id: Some(row.image_id),
            stage,
            reason,
        })),
    }
}

fn finish(
    gray: Gray8,
    orig: (u32, u32),
    bits_stored: u16,
    photometric: &str,
    policy: &ImagePolicy,
) -> Result<Prepared, Failure> {
    let small = window::resize_short_side(&gray, policy.short_side);
    let bytes =
        encode::encode(&small.pixels, small.width, small.height, policy.encoding).map_err(|e| {
            (
                Stage::ImageDecode,
                format!("encoding the stored image failed: {e}"),
            )
        })?;
    Ok(Prepared {
        bytes,
        width: small.width,
        height: small.height,
        orig_rows: orig.1,
        orig_cols: orig.0,
        bits_stored,
        photometric: photometric.to_string(),
        view: None,
    })
}

/// The size check of the policy, as a reject at stage `image_size`.
fn check_size(width: u32, height: u32, policy: &ImagePolicy) -> Result<(), Failure> {
    match policy.refuses_size(width, height) {
        Some(reason) => Err((Stage::ImageSize, reason)),
        None => Ok(()),
    }
}

/// The size an encoded PNG or JPEG declares in its header, read without
/// decoding the pixels.
fn declared_size(bytes: &[u8], format: image::ImageFormat) -> Result<(u32, u32), Failure> {
    image::ImageReader::with_format(std::io::Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| {
            let name = if format == image::ImageFormat::Png {
                "PNG"
            } else {
                "JPEG"
            };
            (Stage::ImageDecode, format!("{name} decode failed: {e}"))
        })
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| (Stage::ImageRead, format!("image unreadable: {e}")))
}

/// A DICOM file: stored values, rescale, window and inversion per the policy.
pub fn dicom(path: &Path, policy: &ImagePolicy) -> Result<Prepared, Failure> {
    let bytes = read(path)?;
    // A reduced-resolution decode (JPEG 2000) still records the size the file declares.
    let refuse = |cols, rows| policy.refuses_size(cols, rows);
    let (stored, info) =
        dicom_image::decode_dicom_bytes_checked(&bytes, policy.short_side, &refuse).map_err(
            |e| match e {
                dicom_image::DicomError::Size(reason) => (Stage::ImageSize, reason),
                e => (Stage::ImageDecode, e.to_string()),
            },
        )?;
    let gray = window::render(
        &stored,
        policy.dicom_window,
        policy.rescale,
        policy.invert_monochrome1,
    );
    let prepared = finish(
        gray,
        (info.cols, info.rows),
        stored.bits_stored,
        &stored.photometric,
        policy,
    )?;
    Ok(Prepared {
        view: info.view_position,
        ..prepared
    })
}

/// An 8-bit JPEG (MIMIC-CXR-JPG): already windowed by the release, so only resized.
pub fn jpeg8(path: &Path, policy: &ImagePolicy) -> Result<Prepared, Failure> {
    let bytes = read(path)?;
    let (w, h) = declared_size(&bytes, image::ImageFormat::Jpeg)?;
    check_size(w, h, policy)?;
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
        .map_err(|e| (Stage::ImageDecode, format!("JPEG decode failed: {e}")))?
        .into_luma8();
    let (w, h) = img.dimensions();
    let gray = Gray8 {
        width: w,
        height: h,
        pixels: img.into_raw(),
    };
    finish(gray, (w, h), 8, "MONOCHROME2", policy)
}

/// A grayscale PNG of 8 or 16 bits (PadChest): windowed by `policy.png_window`.
pub fn png(path: &Path, policy: &ImagePolicy) -> Result<Prepared, Failure> {
    let bytes = read(path)?;
    let (w, h) = declared_size(&bytes, image::ImageFormat::Png)?;
    check_size(w, h, policy)?;
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .map_err(|e| (Stage::ImageDecode, format!("PNG decode failed: {e}")))?;
    windowed_png(img, policy)
}

/// A decoded PNG windowed by `policy.png_window`, its samples as stored.
fn windowed_png(img: image::DynamicImage, policy: &ImagePolicy) -> Result<Prepared, Failure> {
    let (w, h) = (img.width(), img.height());
    // The decoded samples are kept as they are; any other layout (colour,
    // alpha) is reduced to 16-bit luma.
    let (bits, pixels) = match img {
        image::DynamicImage::ImageLuma8(b) => {
            (8, Samples::U8(b.into_raw(), SampleFormat::plain(8)))
        }
        other => (
            16,
            Samples::U16(other.into_luma16().into_raw(), SampleFormat::plain(16)),
        ),
    };
    let stored = StoredImage::monochrome2(w, h, bits, pixels);
    let gray = window::render(&stored, policy.png_window, false, false);
    finish(gray, (w, h), bits, "MONOCHROME2", policy)
}

/// A PNG or JPEG as the downstream releases ship them (COVIDx, ChestX-ray14,
/// CheXpert), told apart by their first bytes since a release's file names do
/// not always match the contents.
///
/// Their 8-bit images are already windowed for display, so these are only
/// reduced to luma (colour and alpha are dropped: the releases store gray
/// images in RGB or RGBA files) and resized, as [`jpeg8`] does. A 16-bit PNG
/// is windowed by `policy.png_window`, as [`png`] does. `photometric` records
/// `RGB` for a colour file.
pub fn png_or_jpeg(path: &Path, policy: &ImagePolicy) -> Result<Prepared, Failure> {
    let bytes = read(path)?;
    let format = match bytes.as_slice() {
        [0x89, b'P', b'N', b'G', ..] => image::ImageFormat::Png,
        [0xFF, 0xD8, ..] => image::ImageFormat::Jpeg,
        other => {
            let head: Vec<String> = other.iter().take(4).map(|b| format!("{b:02x}")).collect();
            return Err((
                Stage::ImageDecode,
                format!(
                    "neither a PNG nor a JPEG: the file starts with [{}]",
                    head.join(" ")
                ),
            ));
        }
    };
    let name = if format == image::ImageFormat::Png {
        "PNG"
    } else {
        "JPEG"
    };
    let (w, h) = declared_size(&bytes, format)?;
    check_size(w, h, policy)?;
    let img = image::load_from_memory_with_format(&bytes, format)
        .map_err(|e| (Stage::ImageDecode, format!("{name} decode failed: {e}")))?;
    use image::DynamicImage as D;
    let photometric = if img.color().has_color() {
        "RGB"
    } else {
        "MONOCHROME2"
    };
    match img {
        D::ImageLuma8(_) | D::ImageLumaA8(_) | D::ImageRgb8(_) | D::ImageRgba8(_) => {
            let img = img.into_luma8();
            let (w, h) = img.dimensions();
            let gray = Gray8 {
                width: w,
                height: h,
                pixels: img.into_raw(),
            };
            finish(gray, (w, h), 8, photometric, policy)
        }
        other => {
            let mut p = windowed_png(other, policy)?;
            p.photometric = photometric.to_string();
            Ok(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_file(dir: &Path, width: u32, height: u32) -> std::path::PathBuf {
        let path = dir.join(format!("{width}x{height}.png"));
        image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_pixel(
            width,
            height,
            image::Luma([700]),
        )
        .save_with_format(&path, image::ImageFormat::Png)
        .unwrap();
        path
    }

    #[test]
    fn pngs_outside_the_size_limits_are_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let policy = ImagePolicy {
            short_side: 64,
            ..ImagePolicy::default()
        };
        let ok = png(&png_file(dir.path(), 48, 100), &policy).unwrap();
        assert_eq!((ok.width, ok.height), (64, 133));
        for (w, h, why) in [
            (1, 1, "minimum"),
            (2, 65535, "2x65535"),
            (40, 400, "aspect"),
        ] {
            let (stage, reason) = png(&png_file(dir.path(), w, h), &policy).unwrap_err();
            assert_eq!(stage, Stage::ImageSize, "{reason}");
            assert!(reason.contains(why), "{reason}");
        }
    }

    #[test]
    fn png_or_jpeg_reads_gray_rgb_and_rgba_by_content_and_refuses_other_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let policy = ImagePolicy {
            short_side: 32,
            ..ImagePolicy::default()
        };
        let gray = image::GrayImage::from_fn(40, 60, |x, y| image::Luma([(x * 3 + y) as u8]));
        // The same gray pixels as L8 PNG, RGBA PNG and RGB PNG saved under a
        // `.jpg` name: identical stored images, the colour ones marked RGB.
        let l8 = dir.path().join("l8.png");
        gray.save_with_format(&l8, image::ImageFormat::Png).unwrap();
        let rgba = dir.path().join("rgba.png");
        image::DynamicImage::ImageLuma8(gray.clone())
            .into_rgba8()
            .save_with_format(&rgba, image::ImageFormat::Png)
            .unwrap();
        let rgb = dir.path().join("rgb.jpg");
        image::DynamicImage::ImageLuma8(gray.clone())
            .into_rgb8()
            .save_with_format(&rgb, image::ImageFormat::Png)
            .unwrap();
        let a = png_or_jpeg(&l8, &policy).unwrap();
        assert_eq!((a.width, a.height, a.bits_stored), (32, 48, 8));
        assert_eq!(a.photometric, "MONOCHROME2");
        for path in [&rgba, &rgb] {
            let b = png_or_jpeg(path, &policy).unwrap();
            assert_eq!(b.bytes, a.bytes, "{}", path.display());
            assert_eq!(b.photometric, "RGB");
        }
        // 8-bit gray is only resized, not windowed: the jpeg8 path's pixels.
        let jpg = dir.path().join("g.jpg");
        gray.save_with_format(&jpg, image::ImageFormat::Jpeg)
            .unwrap();
        assert_eq!(
            png_or_jpeg(&jpg, &policy).unwrap().bytes,
            jpeg8(&jpg, &policy).unwrap().bytes
        );
        // A 16-bit PNG goes through the PNG window, as `png` does.
        let p16 = png_file(dir.path(), 48, 100);
        assert_eq!(
            png_or_jpeg(&p16, &policy).unwrap().bytes,
            png(&p16, &policy).unwrap().bytes
        );
        let junk = dir.path().join("junk.png");
        std::fs::write(&junk, b"GIF89a not an x-ray").unwrap();
        let (stage, reason) = png_or_jpeg(&junk, &policy).unwrap_err();
        assert_eq!(stage, Stage::ImageDecode);
        assert!(reason.contains("neither a PNG nor a JPEG"), "{reason}");
    }

    #[test]
    fn a_dicom_is_refused_from_its_declared_rows_and_columns() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/dicom/rg1_small_explicit_le.dcm");
        let mut policy = ImagePolicy {
            short_side: 64,
            ..ImagePolicy::default()
        };
        assert!(dicom(&path, &policy).is_ok());
        // 460 x 488 as declared: refused when the minimum is above its short side.
        policy.min_side = 461;
        let (stage, reason) = dicom(&path, &policy).unwrap_err();
        assert_eq!(stage, Stage::ImageSize);
        assert!(reason.contains("460x488"), "{reason}");
    }
}
