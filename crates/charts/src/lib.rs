//! Charts drawn one way across the workspace: plotters into a white RGB
//! buffer, text in an embedded font, saved as PNG with the `image` crate.
//! plotters' own PNG encoder is not built (it would pull a second PNG
//! stack), and a system font is not asked for, so the pictures look the
//! same on every machine. `ingest stats` and the training curves draw with
//! this crate; callers reach plotters through the re-export so both use the
//! one version.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use plotters;
use plotters::coord::Shift;
use plotters::prelude::*;

/// DejaVu Sans (licence in `assets/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// The family [`style`] asks for, registered as the embedded font.
const FAMILY: &str = "sans-serif";

/// What a drawing closure returns: plotters' errors, boxed.
pub type DrawResult = Result<(), Box<dyn std::error::Error>>;
/// The drawing area a closure given to [`render`] draws on.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Why a chart could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// The embedded font could not be registered with plotters.
    #[error("the embedded chart font (DejaVu Sans) could not be loaded")]
    Font,
    /// plotters failed to draw the chart.
    #[error("{}: cannot draw chart: {reason}", path.display())]
    Draw {
        /// The PNG file.
        path: PathBuf,
        /// plotters' message.
        reason: String,
    },
    /// The PNG could not be written.
    #[error("{}: cannot write PNG: {source}", path.display())]
    Png {
        /// The PNG file.
        path: PathBuf,
        /// The encoder's error.
        source: image::ImageError,
    },
}

/// A text style of the embedded font at `size` pixels.
pub fn style(size: u32) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size).into_font())
}

/// Lets `draw` paint a white `width × height` picture and saves it as PNG
/// at `path`.
pub fn render(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> DrawResult,
) -> Result<(), ChartError> {
    register_font()?;
    let mut buf = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        draw(&root)
            .and_then(|()| root.present().map_err(Into::into))
            .map_err(|e| ChartError::Draw {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
    }
    image::save_buffer_with_format(
        path,
        &buf,
        width,
        height,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .map_err(|source| ChartError::Png {
        path: path.to_path_buf(),
        source,
    })
}

/// Registers the embedded font once per process; plotters keeps fonts in a
/// global table.
fn register_font() -> Result<(), ChartError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok { Ok(()) } else { Err(ChartError::Font) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_text_and_shapes_into_a_png_of_the_asked_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        render(&path, (200, 100), |area| {
            area.draw(&Rectangle::new(
                [(10, 10), (60, 60)],
                RGBColor(214, 39, 40).filled(),
            ))?;
            area.draw(&Text::new("chest", (100, 40), style(20)))?;
            Ok(())
        })
        .unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (200, 100));
        assert_eq!(img.get_pixel(30, 30).0, [214, 39, 40]);
        assert_eq!(img.get_pixel(190, 90).0, [255, 255, 255]);
        // The text was drawn with the embedded font: some dark pixels in
        // its box, none without a font.
        let inked = (100..190)
            .flat_map(|x| (35..70).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0[0] < 128)
            .count();
        assert!(inked > 20, "{inked} dark pixels where the text is");
    }

    #[test]
    fn a_failed_drawing_names_the_file_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let err = render(&path, (50, 50), |_| Err("no data".into())).unwrap_err();
        assert!(matches!(&err, ChartError::Draw { path: p, .. } if p == &path));
        assert!(err.to_string().contains("bad.png"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn an_unwritable_path_is_a_png_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/dir/x.png");
        let err = render(&path, (10, 10), |_| Ok(())).unwrap_err();
        assert!(matches!(err, ChartError::Png { .. }), "{err}");
    }
}
