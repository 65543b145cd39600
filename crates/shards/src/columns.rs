//! Projected readers and typed columns of a shard's record batches.

use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int8Type, Int32Type};
use arrow_array::{
    ArrayRef, BinaryArray, BooleanArray, Int8Array, Int32Array, ListArray, RecordBatch, StringArray,
};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};
use schemas::{CHEXPERT_CLASSES, col};

use crate::ShardsError;
use crate::error::io_err;

/// A mask of the named top-level columns, so only their pages are read; a
/// name the shard lacks is [`ShardsError::Column`] `missing`.
///
/// Root indices of the Arrow schema are those of the Parquet schema it was
/// derived from, so the mask selects whole columns, nested ones included.
pub fn projection(
    meta: &ArrowReaderMetadata,
    path: &Path,
    names: &[&str],
) -> Result<ProjectionMask, ShardsError> {
    let schema = meta.schema();
    let roots = names
        .iter()
        .map(|name| schema.index_of(name).map_err(|_| missing(path, name)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ProjectionMask::roots(
        meta.metadata().file_metadata().schema_descr(),
        roots,
    ))
}

/// A reader of the named columns of the shard at `path`, in batches of
/// `batch_rows` rows (the Parquet default when `None`). No manifest checks:
/// see [`crate::open_shard`] for those.
pub fn reader(
    path: &Path,
    names: &[&str],
    batch_rows: Option<usize>,
) -> Result<ParquetRecordBatchReader, ShardsError> {
    let file = File::open(path).map_err(io_err(path))?;
    let meta = ArrowReaderMetadata::load(&file, Default::default())
        .map_err(|e| ShardsError::parquet(path, e))?;
    let mask = projection(&meta, path, names)?;
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta);
    let builder = builder.with_projection(mask);
    let builder = match batch_rows {
        Some(rows) => builder.with_batch_size(rows.max(1)),
        None => builder,
    };
    builder.build().map_err(|e| ShardsError::parquet(path, e))
}

fn missing(path: &Path, name: &str) -> ShardsError {
    ShardsError::Column {
        path: path.to_path_buf(),
        column: name.to_string(),
        message: "missing".into(),
    }
}

fn wrong_type(path: &Path, name: &str, want: &str) -> ShardsError {
    ShardsError::Column {
        path: path.to_path_buf(),
        column: name.to_string(),
        message: format!("not {want}"),
    }
}

/// The columns of one record batch of the shard at `path`, typed by name.
/// Each accessor errs with [`ShardsError::Column`] when the column is
/// missing (not projected, or not in the file) or of another type.
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a> {
    batch: &'a RecordBatch,
    path: &'a Path,
}

impl<'a> Columns<'a> {
    /// The columns of `batch`, read from `path` (named in errors).
    pub fn new(batch: &'a RecordBatch, path: &'a Path) -> Columns<'a> {
        Columns { batch, path }
    }

    /// The shard the batch was read from.
    pub fn path(&self) -> &'a Path {
        self.path
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    /// True when the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, name: &str) -> Result<&'a ArrayRef, ShardsError> {
        self.batch
            .column_by_name(name)
            .ok_or_else(|| missing(self.path, name))
    }

    /// A utf8 column (nullable or not).
    pub fn strings(&self, name: &str) -> Result<&'a StringArray, ShardsError> {
        self.get(name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| wrong_type(self.path, name, "utf8"))
    }

    /// A utf8 column as owned values, `None` for nulls.
    pub fn opt_strings(&self, name: &str) -> Result<Vec<Option<String>>, ShardsError> {
        Ok(self
            .strings(name)?
            .iter()
            .map(|s| s.map(str::to_string))
            .collect())
    }

    /// An int32 column.
    pub fn ints(&self, name: &str) -> Result<&'a Int32Array, ShardsError> {
        self.get(name)?
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| wrong_type(self.path, name, "int32"))
    }

    /// A boolean column.
    pub fn bools(&self, name: &str) -> Result<&'a BooleanArray, ShardsError> {
        self.get(name)?
            .as_boolean_opt()
            .ok_or_else(|| wrong_type(self.path, name, "boolean"))
    }

    /// A list column (items not checked; see the typed list accessors).
    pub fn list(&self, name: &str) -> Result<&'a ListArray, ShardsError> {
        self.get(name)?
            .as_list_opt::<i32>()
            .ok_or_else(|| wrong_type(self.path, name, "a list"))
    }

    /// The stored image bytes.
    pub fn image(&self) -> Result<&'a BinaryArray, ShardsError> {
        self.get(col::IMAGE)?
            .as_binary_opt::<i32>()
            .ok_or_else(|| wrong_type(self.path, col::IMAGE, "binary"))
    }

    /// `token_ids`: a list of int32 per row (null for rows without a report).
    pub fn token_ids(&self) -> Result<&'a ListArray, ShardsError> {
        self.typed_list(
            col::TOKEN_IDS,
            |v| v.as_primitive_opt::<Int32Type>().is_some(),
            "int32",
        )
    }

    /// `entity_mask`: a list of booleans per row, aligned with the tokens.
    pub fn entity_mask(&self) -> Result<&'a ListArray, ShardsError> {
        self.typed_list(
            col::ENTITY_MASK,
            |v| v.as_boolean_opt().is_some(),
            "boolean",
        )
    }

    /// `entity_spans`: a list of `{start, end, label}` structs per row.
    pub fn entity_spans(&self) -> Result<&'a ListArray, ShardsError> {
        self.typed_list(col::ENTITY_SPANS, |v| v.as_struct_opt().is_some(), "struct")
    }

    /// `finding_labels`: a list of strings per row.
    pub fn finding_labels(&self) -> Result<&'a ListArray, ShardsError> {
        self.typed_list(
            col::FINDING_LABELS,
            |v| v.as_string_opt::<i32>().is_some(),
            "utf8",
        )
    }

    fn typed_list(
        &self,
        name: &str,
        item_ok: impl Fn(&ArrayRef) -> bool,
        item: &str,
    ) -> Result<&'a ListArray, ShardsError> {
        let list = self.list(name)?;
        if item_ok(list.values()) {
            Ok(list)
        } else {
            Err(wrong_type(self.path, name, &format!("a list of {item}")))
        }
    }

    /// The CheXpert label column of class `i` (int8, null when not mentioned).
    pub fn label(&self, i: usize) -> Result<&'a Int8Array, ShardsError> {
        let name = schemas::label_column(i);
        self.get(&name)?
            .as_primitive_opt::<Int8Type>()
            .ok_or_else(|| wrong_type(self.path, &name, "int8"))
    }

    /// The 14 label columns in [`CHEXPERT_CLASSES`] order.
    pub fn labels(&self) -> Result<Vec<&'a Int8Array>, ShardsError> {
        (0..CHEXPERT_CLASSES.len()).map(|i| self.label(i)).collect()
    }
}
