//! Reading the releases' index CSVs, plain or gzipped, row by row.
//!
//! A malformed row is data, not a failure: [`Table::rows`] yields it as a
//! [`BadRow`] carrying its line number and its fields (as far as they could be
//! split), and the caller records a reject and goes on. A file that ends early
//! (a truncated gzip, an I/O error mid-read) is different: the rows after the
//! break are unknown, so it is a [`CsvError::EndsEarly`] naming the file and
//! the line where reading stopped.

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
    /// The file stops being readable part-way (truncated gzip, I/O error):
    /// the rows after `line` are unknown.
    #[error("{path}: the file ends early, at line {line}: {reason}")]
    EndsEarly {
        /// The file.
        path: PathBuf,
        /// The last line read (the header is line 1).
        line: u64,
        /// What the reader reported.
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
    /// Its fields as far as they could be split (invalid UTF-8 replaced), so
    /// the caller can still name the ids of the row it rejects.
    fields: csv::StringRecord,
}

impl BadRow {
    /// Field `index`, trimmed; empty when absent.
    pub fn get(&self, index: usize) -> &str {
        self.fields.get(index).unwrap_or("").trim()
    }
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
    ///
    /// A broken stream yields one [`CsvError::EndsEarly`] and ends the
    /// iteration: the caller decides whether that stops the run.
    pub fn rows(&mut self) -> impl Iterator<Item = Result<Result<Record, BadRow>, CsvError>> + '_ {
        let width = self.headers.len();
        let path = self.path.clone();
        let reader = &mut self.reader;
        let mut line = 1u64;
        let mut broken = false;
        std::iter::from_fn(move || {
            if broken {
                return None;
            }
            // Bytes first, so that a row of invalid UTF-8 still yields its
            // (lossily decoded) ids for the reject.
            let mut bytes = csv::ByteRecord::new();
            match reader.read_byte_record(&mut bytes) {
                Ok(false) => None,
                Ok(true) => {
                    line = bytes.position().map_or(line + 1, |p| p.line());
                    Some(Ok(match csv::StringRecord::from_byte_record(bytes) {
                        Ok(fields) if fields.len() == width => Ok(Record { line, fields }),
                        Ok(fields) => Err(BadRow {
                            line,
                            reason: format!("{} fields, the header has {width}", fields.len()),
                            fields,
                        }),
                        Err(e) => {
                            let reason = format!("invalid UTF-8: {}", e.utf8_error());
                            Err(BadRow {
                                line,
                                reason,
                                fields: csv::StringRecord::from_byte_record_lossy(
                                    e.into_byte_record(),
                                ),
                            })
                        }
                    }))
                }
                Err(e) => {
                    broken = true;
                    let at = e.position().map_or(line, |p| p.line());
                    Some(Err(CsvError::EndsEarly {
                        path: path.clone(),
                        line: at,
                        reason: match e.kind() {
                            csv::ErrorKind::Io(io) => io.to_string(),
                            _ => e.to_string(),
                        },
                    }))
                }
            }
        })
    }
}

/// Reads every row of `table` through `each`. A file that ends early is an
/// error, unless `allow_truncated`: then the break is returned, so that the
/// caller can reject the rows the file no longer covers.
pub fn read_all(
    table: &mut Table,
    allow_truncated: bool,
    mut each: impl FnMut(Result<Record, BadRow>),
) -> Result<Option<Truncation>, CsvError> {
    for row in table.rows() {
        match row {
            Ok(row) => each(row),
            Err(CsvError::EndsEarly { path, line, reason }) if allow_truncated => {
                tracing::warn!(
                    "{}: the file ends early at line {line} ({reason}); going on as asked",
                    path.display()
                );
                return Ok(Some(Truncation { path, line }));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Where a file that ends early stopped being readable.
#[derive(Debug, Clone)]
pub struct Truncation {
    /// The file.
    pub path: PathBuf,
    /// The last line read.
    pub line: u64,
}

impl std::fmt::Display for Truncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ends early at line {}",
            self.path.display(),
            self.line
        )
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
        let rows: Vec<_> = t.rows().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].as_ref().ok().unwrap().get(1), "2");
        let bad = rows[1].as_ref().err().unwrap();
        assert_eq!(bad.line, 3);
        assert!(bad.reason.contains("1 fields"), "{}", bad.reason);
        assert_eq!(bad.get(0), "3", "a bad row keeps its fields");
        assert_eq!(rows[2].as_ref().ok().unwrap().line, 4);
    }

    #[test]
    fn a_truncated_gzip_is_an_error_naming_the_file_not_a_short_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv.gz");
        let mut text = String::from("a,b\n");
        for i in 0..2000 {
            text.push_str(&format!("{i},{}\n", i * 7919 % 1000));
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        let whole = gz.finish().unwrap();
        std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        let mut t = Table::open(&path).unwrap();
        let rows: Vec<_> = t.rows().collect();
        let (last, good) = rows.split_last().unwrap();
        assert!(good.iter().all(|r| matches!(r, Ok(Ok(_)))));
        assert!(good.len() < 2000, "{}", good.len());
        let err = last
            .as_ref()
            .err()
            .expect("the break is an error")
            .to_string();
        assert!(
            err.contains("t.csv.gz") && err.contains("ends early"),
            "{err}"
        );
    }

    #[test]
    fn a_row_of_invalid_utf8_is_a_bad_row_that_keeps_its_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, b"a,b\n1,2\n7,\xff\xfe\n").unwrap();
        let mut t = Table::open(&path).unwrap();
        let rows: Vec<_> = t.rows().map(Result::unwrap).collect();
        let bad = rows[1].as_ref().err().unwrap();
        assert_eq!((bad.line, bad.get(0)), (3, "7"));
        assert!(bad.reason.contains("UTF-8"), "{}", bad.reason);
    }

    #[test]
    fn missing_file_names_both_candidates() {
        let dir = tempfile::tempdir().unwrap();
        let err = find(dir.path(), "x").unwrap_err().to_string();
        assert!(err.contains("x.csv.gz") && err.contains("x.csv"), "{err}");
    }
}
