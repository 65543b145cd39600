//! Reading the releases' index CSVs, plain or gzipped, row by row.
//!
//! A malformed row is data, not a failure: [`Table::rows`] yields it as an
//! error carrying its line number, and the caller records a reject and goes on.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// Why a CSV file could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// Neither `NAME.csv.gz` nor `NAME.csv` exists.
    #[error("{dir}: neither {stem}.csv.gz nor {stem}.csv exists")]
    Missing {
        /// Folder searched.
        dir: PathBuf,
        /// File stem.
        stem: String,
    },
    /// The file or its header could not be read.
    #[error("{path}: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A column the project needs is not in the header.
    #[error("{path}: no column {column:?} in the header")]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
    },
}

/// Finds `dir/STEM.csv.gz` or `dir/STEM.csv`, the gzipped form first, as the
/// releases ship it.
pub fn find(dir: &Path, stem: &str) -> Result<PathBuf, CsvError> {
    for name in [format!("{stem}.csv.gz"), format!("{stem}.csv")] {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    Err(CsvError::Missing {
        dir: dir.to_path_buf(),
        stem: stem.to_string(),
    })
}

/// An open CSV file with its header.
pub struct Table {
    path: PathBuf,
    headers: Vec<String>,
    reader: csv::Reader<Box<dyn Read>>,
}

/// One data row: its 1-based line number in the file and its fields.
pub struct Record {
    /// Line number in the file (header is line 1).
    pub line: u64,
    fields: csv::StringRecord,
}

impl Record {
    /// Field `index`, trimmed; empty when absent.
    pub fn get(&self, index: usize) -> &str {
        self.fields.get(index).unwrap_or("").trim()
    }
}

/// A row that could not be parsed.
pub struct BadRow {
    /// Line number in the file.
    pub line: u64,
    /// What is wrong with it.
    pub reason: String,
}

impl Table {
    /// Opens a CSV (gzipped when the name ends in `.gz`) and reads its header.
    pub fn open(path: &Path) -> Result<Table, CsvError> {
        let unreadable = |reason: String| CsvError::Unreadable {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|e| unreadable(e.to_string()))?;
        let inner: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)))
        } else {
            Box::new(BufReader::new(file))
        };
        // Flexible: a row with the wrong number of fields is reported per row
        // (a reject), not as an error that stops reading the file.
        let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(inner);
        let headers = reader
            .headers()
            .map_err(|e| unreadable(format!("header: {e}")))?
            .iter()
            .map(|h| h.trim().to_string())
            .collect();
        Ok(Table {
            path: path.to_path_buf(),
            headers,
            reader,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Index of a required column.
    pub fn column(&self, name: &str) -> Result<usize, CsvError> {
        self.headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| CsvError::MissingColumn {
                path: self.path.clone(),
                column: name.to_string(),
            })
    }

    /// The data rows, each either parsed or a [`BadRow`] with its reason.
    pub fn rows(&mut self) -> impl Iterator<Item = Result<Record, BadRow>> + '_ {
        let width = self.headers.len();
        let mut line = 1u64;
        let mut records = self.reader.records();
        let mut broken = false;
        std::iter::from_fn(move || {
            if broken {
                return None;
            }
            let next = records.next()?;
            line += 1;
            Some(match next {
                Ok(fields) => {
                    let line = fields.position().map_or(line, |p| p.line());
                    if fields.len() == width {
                        Ok(Record { line, fields })
                    } else {
                        Err(BadRow {
                            line,
                            reason: format!("{} fields, the header has {width}", fields.len()),
                        })
                    }
                }
                Err(e) => {
                    let line = e.position().map_or(line, |p| p.line());
                    match e.kind() {
                        // A broken stream (truncated gzip, I/O error) ends the file;
                        // it is reported as one bad row at the point it broke.
                        csv::ErrorKind::Io(_) => {
                            broken = true;
                            Err(BadRow {
                                line,
                                reason: format!("file unreadable from here on: {e}"),
                            })
                        }
                        _ => Err(BadRow {
                            line,
                            reason: e.to_string(),
                        }),
                    }
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_gzipped_csv_and_reports_bad_rows_with_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"a,b\n1,2\n3\n4,5\n").unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        assert_eq!(find(dir.path(), "t").unwrap(), path);
        let mut t = Table::open(&path).unwrap();
        assert_eq!(t.column("b").unwrap(), 1);
        assert!(matches!(t.column("c"), Err(CsvError::MissingColumn { .. })));
        let rows: Vec<_> = t.rows().collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].as_ref().ok().unwrap().get(1), "2");
        let bad = rows[1].as_ref().err().unwrap();
        assert_eq!(bad.line, 3);
        assert!(bad.reason.contains("1 fields"), "{}", bad.reason);
        assert_eq!(rows[2].as_ref().ok().unwrap().line, 4);
    }

    #[test]
    fn missing_file_names_both_candidates() {
        let dir = tempfile::tempdir().unwrap();
        let err = find(dir.path(), "x").unwrap_err().to_string();
        assert!(err.contains("x.csv.gz") && err.contains("x.csv"), "{err}");
    }
}
