//! Small writing helpers shared by the two sources: files, gzip CSVs,
//! pixel scaling, and the lesions.jsonl record.

use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Serialize;

use crate::SynthError;

/// Writes a file, creating its folder.
pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<(), SynthError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| SynthError::io(dir, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| SynthError::io(path, e))
}

/// A CSV as text, quoted only where needed (as pandas writes it).
pub(crate) fn csv_text(header: &[&str], rows: &[Vec<String>]) -> Result<String, SynthError> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let err =
        |e: csv::Error| SynthError::io(Path::new("<csv>"), std::io::Error::other(e.to_string()));
    w.write_record(header).map_err(err)?;
    for r in rows {
        w.write_record(r).map_err(err)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| SynthError::io(Path::new("<csv>"), std::io::Error::other(e.to_string())))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Gzip with a zero mtime and no file name, so the bytes depend only on the
/// content.
pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    // Writing into a Vec cannot fail.
    enc.write_all(bytes).expect("write to Vec");
    enc.finish().expect("finish into Vec")
}

/// One lesion in lesions.jsonl.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LesionRecord {
    pub source: &'static str,
    pub image_id: String,
    pub study_id: String,
    pub class: String,
    pub bbox: [u32; 4],
    pub certainty: &'static str,
}

/// One line of lesions.jsonl: an image and everything drawn into it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LesionLine {
    pub source: &'static str,
    pub image_id: String,
    pub study_id: String,
    /// The image file, relative to the output folder.
    pub path: String,
    pub width: u32,
    pub height: u32,
    pub lesions: Vec<LesionRecord>,
}

/// Maps density (0 air .. 1 metal) to stored values `offset + d * span`,
/// clamped to `bits`.
pub(crate) fn to_stored(density: &[f32], offset: f32, span: f32, bits: u16) -> Vec<u16> {
    let max = ((1u32 << bits) - 1) as f32;
    density
        .iter()
        .map(|&d| (offset + d * span).round().clamp(0.0, max) as u16)
        .collect()
}

/// Min-max scaling to 8 bits.
pub(crate) fn minmax_u8(v: &[u16]) -> Vec<u8> {
    let (mut lo, mut hi) = (u16::MAX, 0u16);
    for &x in v {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    let span = (hi.saturating_sub(lo)).max(1) as f32;
    v.iter()
        .map(|&x| (((x - lo) as f32 / span) * 255.0).round() as u8)
        .collect()
}

/// Character offset of a byte offset in `s` (Python string indices).
pub(crate) fn char_offset(s: &str, byte: usize) -> usize {
    s[..byte].chars().count()
}
