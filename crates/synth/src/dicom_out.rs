//! DICOM Part 10 files with the attributes a chest radiograph carries.
//!
//! Files are built in memory with `dicom-object` and, for encapsulated
//! syntaxes, re-encoded with `dicom-pixeldata`'s transcoder, so every file
//! written is one dicom-rs itself can read back. Only syntaxes with an
//! encoder in `dicom-transfer-syntax-registry` 0.10 are used: RLE, JPEG
//! lossless and JPEG 2000 have decoders only there.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::adapters::EncodeOptions;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_pixeldata::Transcode;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

/// The transfer syntaxes the generator writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Syntax {
    /// 1.2.840.10008.1.2.1
    ExplicitLe,
    /// 1.2.840.10008.1.2
    ImplicitLe,
    /// 1.2.840.10008.1.2.1.99 (the whole data set deflated)
    DeflatedExplicitLe,
    /// 1.2.840.10008.1.2.4.80 (CharLS)
    JpegLsLossless,
    /// 1.2.840.10008.1.2.4.81, near = a few grey levels
    JpegLsNearLossless,
    /// 1.2.840.10008.1.2.4.50: 8 bits stored, lossy
    JpegBaseline,
}

impl Syntax {
    /// All written syntaxes, in a fixed order.
    pub const ALL: [Syntax; 6] = [
        Syntax::ExplicitLe,
        Syntax::ImplicitLe,
        Syntax::DeflatedExplicitLe,
        Syntax::JpegLsLossless,
        Syntax::JpegLsNearLossless,
        Syntax::JpegBaseline,
    ];

    /// The transfer syntax UID.
    pub fn uid(self) -> &'static str {
        match self {
            Syntax::ExplicitLe => uids::EXPLICIT_VR_LITTLE_ENDIAN,
            Syntax::ImplicitLe => uids::IMPLICIT_VR_LITTLE_ENDIAN,
            Syntax::DeflatedExplicitLe => uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
            Syntax::JpegLsLossless => uids::JPEGLS_LOSSLESS,
            Syntax::JpegLsNearLossless => uids::JPEGLS_NEAR_LOSSLESS,
            Syntax::JpegBaseline => uids::JPEG_BASELINE8_BIT,
        }
    }

    /// Whether decoding gives back exactly the stored values.
    pub fn lossless(self) -> bool {
        !matches!(self, Syntax::JpegLsNearLossless | Syntax::JpegBaseline)
    }

    /// JPEG baseline can only hold 8-bit samples: the image is drawn at 8
    /// bits for it, rather than letting the encoder drop the low bits
    /// behind the back of WindowCenter/WindowWidth.
    pub fn eight_bit(self) -> bool {
        self == Syntax::JpegBaseline
    }
}

/// Everything the header of one image says.
pub(crate) struct DicomHeader<'a> {
    pub subject_id: &'a str,
    pub study_id: &'a str,
    pub sop_instance_uid: String,
    pub study_uid: String,
    pub series_uid: String,
    pub study_date: &'a str,
    pub study_time: &'a str,
    pub view_position: &'a str,
    pub procedure: &'a str,
    pub dx: bool,
    pub monochrome1: bool,
    pub bits_stored: u16,
    pub rows: u16,
    pub cols: u16,
    pub window: (f64, f64),
}

/// Builds the file in memory and returns its bytes.
///
/// `pixels` are the stored values (already inverted for MONOCHROME1); with
/// `bits_stored == 8` they are written as 8-bit samples.
pub(crate) fn encode(h: &DicomHeader, pixels: &[u16], syntax: Syntax) -> Result<Vec<u8>, String> {
    let sop_class = if h.dx {
        uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION
    } else {
        uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE
    };
    let bits_allocated: u16 = if h.bits_stored <= 8 { 8 } else { 16 };
    let pmi = if h.monochrome1 {
        "MONOCHROME1"
    } else {
        "MONOCHROME2"
    };
    let mut obj = InMemDicomObject::new_empty();
    let mut put = |tag, vr, v: PrimitiveValue| {
        obj.put(DataElement::new(tag, vr, v));
    };
    put(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100".into());
    put(
        tags::IMAGE_TYPE,
        VR::CS,
        PrimitiveValue::Strs(["ORIGINAL".to_string(), "PRIMARY".to_string()].into()),
    );
    put(tags::SOP_CLASS_UID, VR::UI, sop_class.into());
    put(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        h.sop_instance_uid.clone().into(),
    );
    put(tags::STUDY_DATE, VR::DA, h.study_date.into());
    put(tags::STUDY_TIME, VR::TM, h.study_time.into());
    put(tags::ACCESSION_NUMBER, VR::SH, "".into());
    put(
        tags::MODALITY,
        VR::CS,
        if h.dx { "DX" } else { "CR" }.into(),
    );
    put(tags::MANUFACTURER, VR::LO, "SYNTH".into());
    put(tags::STUDY_DESCRIPTION, VR::LO, h.procedure.into());
    put(tags::PATIENT_NAME, VR::PN, "___".into());
    put(tags::PATIENT_ID, VR::LO, h.subject_id.into());
    put(tags::BODY_PART_EXAMINED, VR::CS, "CHEST".into());
    put(tags::VIEW_POSITION, VR::CS, h.view_position.into());
    put(tags::STUDY_INSTANCE_UID, VR::UI, h.study_uid.clone().into());
    put(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        h.series_uid.clone().into(),
    );
    put(tags::STUDY_ID, VR::SH, h.study_id.into());
    put(tags::SERIES_NUMBER, VR::IS, "1".into());
    put(tags::INSTANCE_NUMBER, VR::IS, "1".into());
    put(
        tags::PERFORMED_PROCEDURE_STEP_DESCRIPTION,
        VR::LO,
        h.procedure.into(),
    );
    put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
    put(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, pmi.into());
    put(tags::ROWS, VR::US, PrimitiveValue::from(h.rows));
    put(tags::COLUMNS, VR::US, PrimitiveValue::from(h.cols));
    put(
        tags::BITS_ALLOCATED,
        VR::US,
        PrimitiveValue::from(bits_allocated),
    );
    put(
        tags::BITS_STORED,
        VR::US,
        PrimitiveValue::from(h.bits_stored),
    );
    put(
        tags::HIGH_BIT,
        VR::US,
        PrimitiveValue::from(h.bits_stored - 1),
    );
    put(
        tags::PIXEL_REPRESENTATION,
        VR::US,
        PrimitiveValue::from(0u16),
    );
    put(
        tags::WINDOW_CENTER,
        VR::DS,
        format!("{:.1}", h.window.0).into(),
    );
    put(
        tags::WINDOW_WIDTH,
        VR::DS,
        format!("{:.1}", h.window.1).into(),
    );
    put(tags::RESCALE_INTERCEPT, VR::DS, "0".into());
    put(tags::RESCALE_SLOPE, VR::DS, "1".into());
    put(tags::RESCALE_TYPE, VR::LO, "US".into());
    if h.dx {
        // DX "for presentation" requires the shape to agree with the
        // photometric interpretation: INVERSE for MONOCHROME1.
        put(
            tags::PRESENTATION_LUT_SHAPE,
            VR::CS,
            if h.monochrome1 { "INVERSE" } else { "IDENTITY" }.into(),
        );
    }
    if bits_allocated == 8 {
        let bytes: Vec<u8> = pixels.iter().map(|&p| p.min(255) as u8).collect();
        put(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(bytes));
    } else {
        put(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(pixels.iter().copied().collect()),
        );
    }
    // Build natively first; encapsulated syntaxes are reached by transcoding.
    let native_ts = match syntax {
        Syntax::ImplicitLe => uids::IMPLICIT_VR_LITTLE_ENDIAN,
        _ => uids::EXPLICIT_VR_LITTLE_ENDIAN,
    };
    let mut file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(native_ts)
                // A fixed implementation UID keeps the output byte-identical.
                .implementation_class_uid("2.25.1234567890")
                .implementation_version_name("SYNTH_0_1"),
        )
        .map_err(|e| e.to_string())?;
    if syntax.uid() != native_ts {
        let ts = TransferSyntaxRegistry
            .get(syntax.uid())
            .ok_or_else(|| format!("transfer syntax {} not registered", syntax.uid()))?;
        let options = match syntax {
            // quality 98 at 12 bits: near = 5 grey levels.
            Syntax::JpegLsNearLossless => {
                let mut o = EncodeOptions::default();
                o.quality = Some(98);
                o
            }
            Syntax::JpegBaseline => {
                let mut o = EncodeOptions::default();
                o.quality = Some(92);
                o
            }
            _ => EncodeOptions::default(),
        };
        file.transcode_with_options(ts, options)
            .map_err(|e| e.to_string())?;
    }
    let mut out = Vec::with_capacity(pixels.len() * 2 + 2048);
    file.write_all(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_pixeldata::PixelDecoder;

    fn header(bits: u16, mono1: bool) -> DicomHeader<'static> {
        DicomHeader {
            subject_id: "10000032",
            study_id: "50414267",
            sop_instance_uid: "2.25.1".into(),
            study_uid: "2.25.2".into(),
            series_uid: "2.25.3".into(),
            study_date: "21800506",
            study_time: "213014.531",
            view_position: "PA",
            procedure: "CHEST (PA AND LAT)",
            dx: mono1,
            monochrome1: mono1,
            bits_stored: bits,
            rows: 40,
            cols: 32,
            window: (2048.0, 4096.0),
        }
    }

    #[test]
    fn every_written_syntax_decodes_back() {
        for syntax in Syntax::ALL {
            let bits = if syntax.eight_bit() { 8 } else { 12 };
            let max = (1u32 << bits) - 1;
            // A smooth ramp: lossy codecs keep it within a few grey levels.
            let px: Vec<u16> = (0..40 * 32)
                .map(|i| (((i % 32) * 3 + (i / 32) * 5) as u32 * max / 300) as u16)
                .collect();
            let bytes = encode(&header(bits, syntax == Syntax::ImplicitLe), &px, syntax).unwrap();
            assert_eq!(&bytes[128..132], b"DICM");
            let obj = dicom_object::from_reader(&bytes[128..]).unwrap();
            assert_eq!(
                obj.meta().transfer_syntax().trim_end_matches('\0'),
                syntax.uid()
            );
            let dec = obj.decode_pixel_data().unwrap();
            let back: Vec<u16> = if bits == 8 {
                dec.data().iter().map(|&b| b as u16).collect()
            } else {
                dec.data_ow()
            };
            assert_eq!(back.len(), px.len(), "{syntax:?}");
            let tol = if syntax.lossless() {
                0
            } else if bits == 8 {
                6
            } else {
                5
            };
            let worst = px
                .iter()
                .zip(&back)
                .map(|(a, b)| (*a as i32 - *b as i32).abs())
                .max()
                .unwrap();
            assert!(worst <= tol, "{syntax:?}: max error {worst}");
        }
    }
}
