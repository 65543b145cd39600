//! Stored images back to pixels (see `schemas::ImageEncoding`).

use std::borrow::Cow;

use schemas::ImageEncoding;

/// Why stored image bytes could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The PNG or JPEG codec failed.
    #[error("image codec: {0}")]
    Codec(#[from] image::ImageError),
    /// The bytes do not hold `height × width` pixels.
    #[error("expected {expected} pixels, found {found}")]
    Size {
        /// height × width.
        expected: usize,
        /// What the bytes held.
        found: usize,
    },
}

/// Decodes a stored image to `width × height` 8-bit pixels, row-major:
/// borrowed when stored raw, decoded (PNG of 8 or 16 bits, JPEG) to 8-bit
/// grey otherwise. The pixel count is checked either way.
pub fn decode_image(
    bytes: &[u8],
    width: u32,
    height: u32,
    encoding: ImageEncoding,
) -> Result<Cow<'_, [u8]>, DecodeError> {
    let pixels = match encoding {
        ImageEncoding::Raw => Cow::Borrowed(bytes),
        ImageEncoding::Png | ImageEncoding::Jpeg { .. } => {
            let format = match encoding {
                ImageEncoding::Png => image::ImageFormat::Png,
                _ => image::ImageFormat::Jpeg,
            };
            Cow::Owned(
                image::load_from_memory_with_format(bytes, format)?
                    .into_luma8()
                    .into_raw(),
            )
        }
    };
    let expected = width as usize * height as usize;
    if pixels.len() != expected {
        return Err(DecodeError::Size {
            expected,
            found: pixels.len(),
        });
    }
    Ok(pixels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ExtendedColorType, ImageEncoder};

    fn png(pixels: &[u8], w: u32, h: u32, color: ExtendedColorType) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(pixels, w, h, color)
            .unwrap();
        out
    }

    #[test]
    fn raw_is_borrowed_and_png_decodes_exactly() {
        let px: Vec<u8> = (0..12).map(|i| i * 20).collect();
        let raw = decode_image(&px, 4, 3, ImageEncoding::Raw).unwrap();
        assert!(matches!(raw, Cow::Borrowed(_)));
        let stored = png(&px, 4, 3, ExtendedColorType::L8);
        let back = decode_image(&stored, 4, 3, ImageEncoding::Png).unwrap();
        assert_eq!(&*back, &px[..]);
    }

    #[test]
    fn sixteen_bit_png_decodes_to_8_bits_rounded() {
        // Native-endian 16-bit samples, as the encoder takes them.
        let values: [u16; 4] = [0, 0x1234, 0x8000, 0xffff];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let stored = png(&bytes, 2, 2, ExtendedColorType::L16);
        let back = decode_image(&stored, 2, 2, ImageEncoding::Png).unwrap();
        // v / 257 rounded: 4660 → 18, 32768 → 128.
        assert_eq!(&*back, &[0u8, 18, 128, 255]);
    }

    #[test]
    fn wrong_size_and_bad_bytes_are_errors_not_panics() {
        assert!(matches!(
            decode_image(&[0u8; 10], 4, 4, ImageEncoding::Raw),
            Err(DecodeError::Size {
                expected: 16,
                found: 10
            })
        ));
        let err = decode_image(b"not a png", 4, 4, ImageEncoding::Png).unwrap_err();
        assert!(err.to_string().starts_with("image codec:"), "{err}");
    }
}
