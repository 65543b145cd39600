//! Storage encodings of the 8-bit image column (see `schemas::ImageEncoding`).
//!
//! `Raw` is the default: the loader spends no time decoding it, and the
//! column's zstd compression recovers much of what PNG would save (figures in
//! `bench/RESULTS.md`). `Png` and `Jpeg` trade loader time for disk.

use image::{ExtendedColorType, ImageEncoder};
use schemas::ImageEncoding;

/// Why stored image bytes could not be read back (or encoded): the
/// decoder's error, shared with every reader of the shards.
pub use shards::DecodeError as EncodeError;

/// Encodes `pixels` (row-major, `width × height`) as `encoding`.
pub fn encode(
    pixels: &[u8],
    width: u32,
    height: u32,
    encoding: ImageEncoding,
) -> Result<Vec<u8>, EncodeError> {
    check_size(pixels.len(), width, height)?;
    let mut out = Vec::new();
    match encoding {
        ImageEncoding::Raw => out.extend_from_slice(pixels),
        ImageEncoding::Png => image::codecs::png::PngEncoder::new(&mut out).write_image(
            pixels,
            width,
            height,
            ExtendedColorType::L8,
        )?,
        ImageEncoding::Jpeg { quality } => {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
                .write_image(pixels, width, height, ExtendedColorType::L8)?
        }
    }
    Ok(out)
}

/// Decodes bytes written by [`encode`] back to `width × height` 8-bit pixels.
pub fn decode(
    bytes: &[u8],
    width: u32,
    height: u32,
    encoding: ImageEncoding,
) -> Result<Vec<u8>, EncodeError> {
    shards::decode_image(bytes, width, height, encoding).map(std::borrow::Cow::into_owned)
}

fn check_size(found: usize, width: u32, height: u32) -> Result<(), EncodeError> {
    let expected = width as usize * height as usize;
    if found == expected {
        Ok(())
    } else {
        Err(EncodeError::Size { expected, found })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> Vec<u8> {
        (0..w * h).map(|i| ((i % w) * 255 / w) as u8).collect()
    }

    #[test]
    fn raw_and_png_round_trip_exactly() {
        let px = gradient(40, 30);
        for enc in [ImageEncoding::Raw, ImageEncoding::Png] {
            let bytes = encode(&px, 40, 30, enc).unwrap();
            assert_eq!(decode(&bytes, 40, 30, enc).unwrap(), px, "{enc:?}");
        }
    }

    #[test]
    fn jpeg_round_trips_within_a_few_levels() {
        let px = gradient(64, 64);
        let enc = ImageEncoding::Jpeg { quality: 95 };
        let back = decode(&encode(&px, 64, 64, enc).unwrap(), 64, 64, enc).unwrap();
        let worst = px
            .iter()
            .zip(&back)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 4, "worst difference {worst}");
    }

    #[test]
    fn wrong_size_is_an_error_not_a_panic() {
        assert!(matches!(
            decode(&[0u8; 10], 4, 4, ImageEncoding::Raw),
            Err(EncodeError::Size {
                expected: 16,
                found: 10
            })
        ));
    }
}
