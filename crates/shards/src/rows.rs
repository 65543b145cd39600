//! Whole rows: the writer's input and, read back, a shard's contents for
//! tests, tools and small data. (The training loader reads columns, not rows.)

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Int8Builder, Int32Builder, ListBuilder, StringBuilder,
    StructBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::Int32Type;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use schemas::{CHEXPERT_CLASSES, EntitySpan, col, shard_schema};

use crate::{Columns, ShardsError};

/// One shard row, owned. Field meanings are those of `schemas::col`.
#[derive(Debug, Clone, Default, PartialEq)]
#[allow(missing_docs)]
pub struct Row {
    pub source: String,
    pub subject_id: String,
    pub study_id: String,
    pub image_id: String,
    pub split: String,
    pub view: String,
    pub paired: bool,
    pub image: Vec<u8>,
    pub image_height: i32,
    pub image_width: i32,
    pub orig_rows: i32,
    pub orig_cols: i32,
    pub bits_stored: i32,
    pub photometric: String,
    pub report: Option<String>,
    pub findings: Option<String>,
    pub impression: Option<String>,
    pub last_paragraph: Option<String>,
    pub comparison: Option<String>,
    pub indication: Option<String>,
    pub text: Option<String>,
    pub token_ids: Option<Vec<i32>>,
    pub truncated: Option<bool>,
    pub entity_spans: Option<Vec<EntitySpan>>,
    pub entity_mask: Option<Vec<bool>>,
    pub entity_source: Option<String>,
    /// CheXpert labels in `schemas::CHEXPERT_CLASSES` order.
    pub labels: [Option<i8>; 14],
    pub finding_labels: Vec<String>,
}

/// Parquet bytes of `rows`: zstd at `zstd_level` on every column, row
/// groups of at most `row_group_rows` rows (the loader's unit of reading).
/// The bytes depend only on the rows and these two numbers.
pub fn encode_rows(
    rows: &[Row],
    row_group_rows: usize,
    zstd_level: i32,
) -> Result<Vec<u8>, String> {
    let batch = rows_to_batch(rows)?;
    let level = ZstdLevel::try_new(zstd_level).map_err(|e| e.to_string())?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .build();
    let mut bytes = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut bytes, batch.schema(), Some(props)).map_err(|e| e.to_string())?;
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.close().map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// The list builder for a schema column, with the schema's own item field so
/// the batch matches [`shard_schema`] exactly.
fn list_builder<B: arrow_array::builder::ArrayBuilder>(name: &str, values: B) -> ListBuilder<B> {
    let schema = shard_schema();
    let item = match schema
        .field_with_name(name)
        .expect("column in schema")
        .data_type()
    {
        DataType::List(item) => item.clone(),
        other => unreachable!("{name} is {other}, not a list"),
    };
    ListBuilder::new(values).with_field(item)
}

/// Builds one Arrow batch from rows, column by column, following [`shard_schema`].
pub fn rows_to_batch(rows: &[Row]) -> Result<RecordBatch, String> {
    let strings = |f: &dyn Fn(&Row) -> &str| -> ArrayRef {
        let mut b = StringBuilder::new();
        rows.iter().for_each(|r| b.append_value(f(r)));
        Arc::new(b.finish())
    };
    let opt_strings = |f: &dyn Fn(&Row) -> Option<&str>| -> ArrayRef {
        let mut b = StringBuilder::new();
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish())
    };
    let ints = |f: &dyn Fn(&Row) -> i32| -> ArrayRef {
        let mut b = Int32Builder::new();
        rows.iter().for_each(|r| b.append_value(f(r)));
        Arc::new(b.finish())
    };

    let mut paired = BooleanBuilder::new();
    let mut image = BinaryBuilder::new();
    let mut truncated = BooleanBuilder::new();
    let mut token_ids = list_builder(col::TOKEN_IDS, Int32Builder::new());
    let mut entity_mask = list_builder(col::ENTITY_MASK, BooleanBuilder::new());
    let span_fields = schemas::span_fields();
    let mut spans = list_builder(
        col::ENTITY_SPANS,
        StructBuilder::from_fields(span_fields, 0),
    );
    let mut finding_labels = list_builder(col::FINDING_LABELS, StringBuilder::new());
    for r in rows {
        paired.append_value(r.paired);
        image.append_value(&r.image);
        truncated.append_option(r.truncated);
        match &r.token_ids {
            Some(ids) => {
                token_ids.values().append_slice(ids);
                token_ids.append(true);
            }
            None => token_ids.append(false),
        }
        match &r.entity_mask {
            Some(mask) => {
                mask.iter()
                    .for_each(|&m| entity_mask.values().append_value(m));
                entity_mask.append(true);
            }
            None => entity_mask.append(false),
        }
        match &r.entity_spans {
            Some(list) => {
                let s = spans.values();
                for span in list {
                    let to_i32 = |v: usize| {
                        i32::try_from(v).map_err(|_| format!("span offset {v} too large"))
                    };
                    s.field_builder::<Int32Builder>(0)
                        .expect("start")
                        .append_value(to_i32(span.start)?);
                    s.field_builder::<Int32Builder>(1)
                        .expect("end")
                        .append_value(to_i32(span.end)?);
                    s.field_builder::<StringBuilder>(2)
                        .expect("label")
                        .append_value(&span.label);
                    s.append(true);
                }
                spans.append(true);
            }
            None => spans.append(false),
        }
        for l in &r.finding_labels {
            finding_labels.values().append_value(l);
        }
        finding_labels.append(true);
    }

    let mut columns: Vec<ArrayRef> = vec![
        strings(&|r| &r.source),
        strings(&|r| &r.subject_id),
        strings(&|r| &r.study_id),
        strings(&|r| &r.image_id),
        strings(&|r| &r.split),
        strings(&|r| &r.view),
        Arc::new(paired.finish()),
        Arc::new(image.finish()),
        ints(&|r| r.image_height),
        ints(&|r| r.image_width),
        ints(&|r| r.orig_rows),
        ints(&|r| r.orig_cols),
        ints(&|r| r.bits_stored),
        strings(&|r| &r.photometric),
        opt_strings(&|r| r.report.as_deref()),
        opt_strings(&|r| r.findings.as_deref()),
        opt_strings(&|r| r.impression.as_deref()),
        opt_strings(&|r| r.last_paragraph.as_deref()),
        opt_strings(&|r| r.comparison.as_deref()),
        opt_strings(&|r| r.indication.as_deref()),
        opt_strings(&|r| r.text.as_deref()),
        Arc::new(token_ids.finish()),
        Arc::new(truncated.finish()),
        Arc::new(spans.finish()),
        Arc::new(entity_mask.finish()),
        opt_strings(&|r| r.entity_source.as_deref()),
    ];
    for class in 0..CHEXPERT_CLASSES.len() {
        let mut b = Int8Builder::new();
        rows.iter().for_each(|r| b.append_option(r.labels[class]));
        columns.push(Arc::new(b.finish()));
    }
    columns.push(Arc::new(finding_labels.finish()));
    RecordBatch::try_new(shard_schema(), columns).map_err(|e| e.to_string())
}

/// Reads a shard back into rows: the inverse of [`rows_to_batch`]. No
/// manifest checks (see [`crate::open_shard`]); a missing or mistyped
/// column is an error naming it.
pub fn read_rows(path: &Path) -> Result<Vec<Row>, ShardsError> {
    let schema = shard_schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mut rows = Vec::new();
    for batch in crate::reader(path, &names, None)? {
        let batch = batch.map_err(|e| ShardsError::parquet(path, e))?;
        batches_rows(&Columns::new(&batch, path), &mut rows)?;
    }
    Ok(rows)
}

/// Appends the rows of one batch to `rows`.
fn batches_rows(c: &Columns<'_>, rows: &mut Vec<Row>) -> Result<(), ShardsError> {
    let string = |name: &str| -> Result<Vec<String>, ShardsError> {
        Ok(c.opt_strings(name)?
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect())
    };
    let [source, subject, study, image_id, split, view, photometric] = [
        col::SOURCE,
        col::SUBJECT_ID,
        col::STUDY_ID,
        col::IMAGE_ID,
        col::SPLIT,
        col::VIEW,
        col::PHOTOMETRIC,
    ]
    .map(string);
    let [
        report,
        findings,
        impression,
        last,
        comparison,
        indication,
        text,
        entity_source,
    ] = [
        col::REPORT,
        col::FINDINGS,
        col::IMPRESSION,
        col::LAST_PARAGRAPH,
        col::COMPARISON,
        col::INDICATION,
        col::TEXT,
        col::ENTITY_SOURCE,
    ]
    .map(|name| c.opt_strings(name));
    let [height, width, orig_rows, orig_cols, bits] = [
        col::IMAGE_HEIGHT,
        col::IMAGE_WIDTH,
        col::ORIG_ROWS,
        col::ORIG_COLS,
        col::BITS_STORED,
    ]
    .map(|name| c.ints(name));
    let (height, width, orig_rows, orig_cols, bits) =
        (height?, width?, orig_rows?, orig_cols?, bits?);
    let (paired, truncated, image) = (c.bools(col::PAIRED)?, c.bools(col::TRUNCATED)?, c.image()?);
    let (tokens, mask, spans, finding_labels) = (
        c.token_ids()?,
        c.entity_mask()?,
        c.entity_spans()?,
        c.finding_labels()?,
    );
    let labels = c.labels()?;
    let span_fields = spans.values().as_struct();
    let span_ints = |name: &str| {
        span_fields
            .column_by_name(name)
            .and_then(|a| a.as_primitive_opt::<Int32Type>())
            .ok_or_else(|| ShardsError::Column {
                path: c.path().to_path_buf(),
                column: format!("{}.{name}", col::ENTITY_SPANS),
                message: "missing or not int32".into(),
            })
    };
    let (starts, ends) = (span_ints(col::SPAN_START)?, span_ints(col::SPAN_END)?);
    let span_labels = span_fields
        .column_by_name(col::SPAN_LABEL)
        .and_then(|a| a.as_string_opt::<i32>())
        .ok_or_else(|| ShardsError::Column {
            path: c.path().to_path_buf(),
            column: format!("{}.{}", col::ENTITY_SPANS, col::SPAN_LABEL),
            message: "missing or not utf8".into(),
        })?;
    let (source, subject, study, image_id, split, view, photometric) = (
        source?,
        subject?,
        study?,
        image_id?,
        split?,
        view?,
        photometric?,
    );
    let (report, findings, impression, last, comparison, indication, text, entity_source) = (
        report?,
        findings?,
        impression?,
        last?,
        comparison?,
        indication?,
        text?,
        entity_source?,
    );
    let span_offsets = spans.value_offsets();
    let finding_values = finding_labels.values().as_string::<i32>();
    let finding_offsets = finding_labels.value_offsets();
    for i in 0..c.len() {
        let token_ids = tokens.is_valid(i).then(|| {
            tokens
                .value(i)
                .as_primitive::<Int32Type>()
                .values()
                .to_vec()
        });
        let entity_mask = mask.is_valid(i).then(|| {
            mask.value(i)
                .as_boolean()
                .iter()
                .map(|b| b == Some(true))
                .collect()
        });
        let entity_spans = spans.is_valid(i).then(|| {
            (span_offsets[i] as usize..span_offsets[i + 1] as usize)
                .map(|j| EntitySpan {
                    start: starts.value(j) as usize,
                    end: ends.value(j) as usize,
                    label: span_labels.value(j).to_string(),
                })
                .collect()
        });
        rows.push(Row {
            source: source[i].clone(),
            subject_id: subject[i].clone(),
            study_id: study[i].clone(),
            image_id: image_id[i].clone(),
            split: split[i].clone(),
            view: view[i].clone(),
            paired: paired.value(i),
            image: image.value(i).to_vec(),
            image_height: height.value(i),
            image_width: width.value(i),
            orig_rows: orig_rows.value(i),
            orig_cols: orig_cols.value(i),
            bits_stored: bits.value(i),
            photometric: photometric[i].clone(),
            report: report[i].clone(),
            findings: findings[i].clone(),
            impression: impression[i].clone(),
            last_paragraph: last[i].clone(),
            comparison: comparison[i].clone(),
            indication: indication[i].clone(),
            text: text[i].clone(),
            token_ids,
            truncated: truncated.is_valid(i).then(|| truncated.value(i)),
            entity_spans,
            entity_mask,
            entity_source: entity_source[i].clone(),
            labels: std::array::from_fn(|c| labels[c].is_valid(i).then(|| labels[c].value(i))),
            finding_labels: (finding_offsets[i] as usize..finding_offsets[i + 1] as usize)
                .map(|j| finding_values.value(j).to_string())
                .collect(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::ShardEntry;

    fn row(i: usize) -> Row {
        Row {
            source: "mimic".into(),
            subject_id: format!("1{i:07}"),
            study_id: format!("5{i:07}"),
            image_id: format!("img{i}"),
            split: "train".into(),
            view: "PA".into(),
            paired: true,
            image: vec![i as u8; 12],
            image_height: 3,
            image_width: 4,
            orig_rows: 30,
            orig_cols: 40,
            bits_stored: 12,
            photometric: "MONOCHROME2".into(),
            text: Some("no effusion".into()),
            token_ids: Some(vec![49406, 871, 49407]),
            truncated: Some(false),
            entity_spans: Some(vec![EntitySpan {
                start: 3,
                end: 11,
                label: "ENTITY".into(),
            }]),
            entity_mask: Some(vec![false, true, false]),
            entity_source: Some("lexicon".into()),
            labels: [Some(1); 14],
            ..Default::default()
        }
    }

    /// A row with every optional field absent and labels of every kind.
    fn sparse_row() -> Row {
        let mut labels = [None; 14];
        labels[0] = Some(-1);
        labels[3] = Some(0);
        Row {
            source: "padchest".into(),
            image_id: "p1".into(),
            split: "test".into(),
            labels,
            finding_labels: vec!["pleural effusion".into(), "exclude".into()],
            ..Default::default()
        }
    }

    fn write(dir: &Path, rows: &[Row]) -> (std::path::PathBuf, ShardEntry) {
        let bytes = encode_rows(rows, 2, 3).unwrap();
        let path = dir.join("shard-00000.parquet");
        std::fs::write(&path, &bytes).unwrap();
        let entry = ShardEntry {
            file: "shard-00000.parquet".into(),
            rows: rows.len() as u64,
            sha256: crate::sha256_hex(&bytes),
        };
        (path, entry)
    }

    #[test]
    fn rows_round_trip_through_a_shard() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![row(0), sparse_row(), row(2)];
        let (path, entry) = write(dir.path(), &rows);
        assert_eq!(read_rows(&path).unwrap(), rows);
        let shard = crate::open_shard(&path, &entry, true).unwrap();
        assert_eq!(shard.rows(), 3);
        // Row groups of 2 rows.
        assert_eq!(shard.rg_starts, vec![0, 2, 3]);
    }

    #[test]
    fn the_same_rows_give_the_same_bytes() {
        let rows = vec![row(0), sparse_row()];
        assert_eq!(encode_rows(&rows, 2, 3), encode_rows(&rows, 2, 3));
        assert_ne!(encode_rows(&rows, 2, 3), encode_rows(&rows, 1, 3));
    }

    #[test]
    fn a_damaged_shard_fails_sha256_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (path, entry) = write(dir.path(), &[row(0), row(1)]);
        let mut bytes = std::fs::read(&path).unwrap();
        // Damage a byte in the middle: magic and footer stay intact.
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = crate::open_shard(&path, &entry, true).unwrap_err();
        assert!(matches!(err, ShardsError::ShaMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("sha256"),
            "{msg}"
        );
        // Not verifying passes the hash check (the footer is intact).
        assert!(crate::open_shard(&path, &entry, false).is_ok());
        assert!(crate::verify_sha256(&path, &entry.sha256).is_err());
    }

    #[test]
    fn a_truncated_shard_is_reported_as_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let (path, entry) = write(dir.path(), &[row(0), row(1)]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        for verify in [true, false] {
            let err = crate::open_shard(&path, &entry, verify).unwrap_err();
            assert!(
                matches!(err, ShardsError::Truncated { len, .. } if len == bytes.len() as u64 - 100),
                "{err}"
            );
            assert!(err.to_string().contains("truncated"), "{err}");
        }
    }

    #[test]
    fn a_wrong_row_count_and_a_missing_shard_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut entry) = write(dir.path(), &[row(0)]);
        entry.rows = 5;
        let err = crate::open_shard(&path, &entry, false).unwrap_err();
        assert!(
            matches!(
                err,
                ShardsError::RowCountMismatch {
                    manifest: 5,
                    file: 1,
                    ..
                }
            ),
            "{err}"
        );
        let gone = dir.path().join("shard-00009.parquet");
        let err = crate::open_shard(&gone, &entry, true).unwrap_err();
        assert!(matches!(err, ShardsError::MissingShard { .. }), "{err}");
        assert!(err.to_string().contains("shard-00009.parquet"), "{err}");
    }

    #[test]
    fn columns_say_which_column_is_missing_or_mistyped() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write(dir.path(), &[row(0)]);
        let batch = crate::reader(&path, &[col::SPLIT, col::PAIRED], None)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let c = Columns::new(&batch, &path);
        assert_eq!(c.strings(col::SPLIT).unwrap().value(0), "train");
        let err = c.strings(col::PAIRED).unwrap_err();
        assert!(err.to_string().contains("paired: not utf8"), "{err}");
        let err = c.ints(col::IMAGE_HEIGHT).unwrap_err();
        assert!(err.to_string().contains("image_height: missing"), "{err}");
        let err = crate::reader(&path, &["no_such_column"], None).unwrap_err();
        assert!(err.to_string().contains("no_such_column: missing"), "{err}");
    }
}
