//! Reads manifests, shards and reject logs into running counts, then into [`Stats`].

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use std::borrow::Cow;

use arrow_array::cast::AsArray;
use arrow_array::types::Int32Type;
use arrow_array::{
    Array, BinaryArray, BooleanArray, Int8Array, Int32Array, ListArray, RecordBatch, StringArray,
};
use rayon::prelude::*;
use schemas::{
    CHEXPERT_CLASSES, CONTEXT_LENGTH, ImageEncoding, MANIFEST_FILE, REJECTS_FILE, Reject, Stage,
    col,
};
use shards::ShardsError;

use super::{
    EntityStats, FindingLabelStats, FolderStats, Frequency, Histogram, ImageStats, LabelCounts,
    ReasonCount, RejectStats, ReportOptions, Stats, StatsError, Summary, TextStats, io,
};

/// Rows per batch read from a shard. Bounds memory: with raw 256-pixel
/// images a batch holds about 20 MB of pixels, whatever the row group size.
const BATCH_ROWS: usize = 256;
/// Entries kept in the top-N lists.
const TOP_N: usize = 30;
/// Entries kept in the lists of common image sizes.
const TOP_SIZES: usize = 10;
/// Undecodable images named in the report; the rest are only counted.
const MAX_EXAMPLES: usize = 10;
/// Reject reasons are grouped by at most this many characters.
const REASON_CHARS: usize = 60;

/// Counts that the charts draw but `stats.json` leaves out (too many values).
#[derive(Debug, Default)]
pub(super) struct Detail {
    /// Per source: (cols, rows) of the original images and how many.
    pub orig_sizes: BTreeMap<String, BTreeMap<(i32, i32), u64>>,
    /// Per source: (width, height) of the stored images and how many.
    pub stored_sizes: BTreeMap<String, BTreeMap<(i32, i32), u64>>,
}

/// Reads every folder and returns the statistics and the chart detail.
pub(super) fn collect(
    shard_dirs: &[PathBuf],
    opts: &ReportOptions,
) -> Result<(Stats, Detail), StatsError> {
    if shard_dirs.is_empty() {
        return Err(StatsError::NoInput);
    }
    let mut acc = Accumulator::default();
    for dir in shard_dirs {
        acc.add_folder(dir, opts)?;
    }
    Ok(acc.finish())
}

/// Counts of values of an integer quantity: exact median without keeping
/// every value (lengths and sizes take few distinct values).
type ValueCounts = BTreeMap<i64, u64>;

/// Running counts over every row read so far.
#[derive(Default)]
struct Accumulator {
    folders: Vec<FolderStats>,
    problems: Vec<String>,
    counts: schemas::Counts,
    rows: u64,
    paired: u64,
    /// Source names seen in the `source` column; per-source counts are indexed by position here.
    sources: Vec<String>,
    by_split: BTreeMap<String, u64>,
    by_view: BTreeMap<String, u64>,
    by_source_split: Vec<BTreeMap<String, u64>>,
    by_source_view: Vec<BTreeMap<String, u64>>,
    rows_per_source: Vec<u64>,
    labels: Vec<Vec<LabelCounts>>,
    finding_labels: HashMap<String, u64>,
    finding_label_rows: u64,
    reports: u64,
    chars: ValueCounts,
    tokens: ValueCounts,
    truncated: u64,
    spans_per_report: ValueCounts,
    entity_sources: BTreeMap<String, u64>,
    entity_labels: BTreeMap<String, u64>,
    entity_strings: HashMap<String, u64>,
    invalid_spans: u64,
    stored_height: ValueCounts,
    stored_width: ValueCounts,
    orig_rows: ValueCounts,
    orig_cols: ValueCounts,
    orig_sizes: Vec<BTreeMap<(i32, i32), u64>>,
    stored_sizes: Vec<BTreeMap<(i32, i32), u64>>,
    intensity: Vec<[u64; 256]>,
    decoded: u64,
    pixels: u64,
    undecodable: u64,
    undecodable_examples: Vec<String>,
    reject_records: u64,
    reject_stages: BTreeMap<Stage, u64>,
    /// (stage, reason group) → (count, first full reason).
    reject_reasons: BTreeMap<(Stage, String), (u64, String)>,
    // Buffers reused across rows so the row loops allocate nothing per row.
    row_source: Vec<usize>,
    char_starts: Vec<usize>,
    entity_buf: String,
}

/// The columns of one batch that the statistics read, typed.
struct Columns<'a> {
    source: &'a StringArray,
    image_id: &'a StringArray,
    split: &'a StringArray,
    view: &'a StringArray,
    paired: &'a BooleanArray,
    image: &'a BinaryArray,
    image_height: &'a Int32Array,
    image_width: &'a Int32Array,
    orig_rows: &'a Int32Array,
    orig_cols: &'a Int32Array,
    text: &'a StringArray,
    token_ids: &'a ListArray,
    truncated: &'a BooleanArray,
    entity_spans: &'a ListArray,
    entity_source: &'a StringArray,
    finding_labels: &'a ListArray,
    labels: Vec<&'a Int8Array>,
}

/// The columns to read, by name: everything but the report sections, the
/// entity mask and the provenance columns.
fn projected_columns() -> Vec<String> {
    let mut names: Vec<String> = [
        col::SOURCE,
        col::IMAGE_ID,
        col::SPLIT,
        col::VIEW,
        col::PAIRED,
        col::IMAGE,
        col::IMAGE_HEIGHT,
        col::IMAGE_WIDTH,
        col::ORIG_ROWS,
        col::ORIG_COLS,
        col::TEXT,
        col::TOKEN_IDS,
        col::TRUNCATED,
        col::ENTITY_SPANS,
        col::ENTITY_SOURCE,
        col::FINDING_LABELS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.extend((0..CHEXPERT_CLASSES.len()).map(schemas::label_column));
    names
}

impl<'a> Columns<'a> {
    fn new(batch: &'a RecordBatch, path: &'a Path) -> Result<Self, ShardsError> {
        let c = shards::Columns::new(batch, path);
        Ok(Columns {
            source: c.strings(col::SOURCE)?,
            image_id: c.strings(col::IMAGE_ID)?,
            split: c.strings(col::SPLIT)?,
            view: c.strings(col::VIEW)?,
            paired: c.bools(col::PAIRED)?,
            image: c.image()?,
            image_height: c.ints(col::IMAGE_HEIGHT)?,
            image_width: c.ints(col::IMAGE_WIDTH)?,
            orig_rows: c.ints(col::ORIG_ROWS)?,
            orig_cols: c.ints(col::ORIG_COLS)?,
            text: c.strings(col::TEXT)?,
            // Lists unchecked inside: the counts below treat items of
            // another type as invalid rather than refuse the shard.
            token_ids: c.list(col::TOKEN_IDS)?,
            truncated: c.bools(col::TRUNCATED)?,
            entity_spans: c.list(col::ENTITY_SPANS)?,
            entity_source: c.strings(col::ENTITY_SOURCE)?,
            finding_labels: c.list(col::FINDING_LABELS)?,
            labels: c.labels()?,
        })
    }
}

/// A `shards` error as the report's own, naming the manifest that lists
/// the shard where the report always has.
fn shards_error(e: ShardsError, manifest: &Path) -> StatsError {
    match e {
        ShardsError::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
            StatsError::MissingShard {
                path,
                manifest: manifest.to_path_buf(),
            }
        }
        ShardsError::MissingShard { path } => StatsError::MissingShard {
            path,
            manifest: manifest.to_path_buf(),
        },
        ShardsError::Io { path, source } => StatsError::Io { path, source },
        ShardsError::MissingManifest { path } => StatsError::MissingManifest {
            dir: path.parent().unwrap_or(Path::new("")).to_path_buf(),
        },
        ShardsError::BadManifest { path, source } => StatsError::Manifest { path, source },
        ShardsError::SchemaVersion {
            path,
            found,
            expected,
        } => StatsError::SchemaVersion {
            path,
            found,
            expected,
        },
        ShardsError::ShaMismatch {
            path,
            manifest: expected,
            file: found,
        } => StatsError::Checksum {
            path,
            manifest: manifest.to_path_buf(),
            expected,
            found,
        },
        ShardsError::Column {
            path,
            column,
            message,
        } => StatsError::Column {
            path,
            column,
            reason: message,
        },
        ShardsError::Parquet { path, source } => StatsError::Parquet { path, source },
        other => StatsError::Parquet {
            path: other.path().to_path_buf(),
            source: parquet::errors::ParquetError::General(other.reason()),
        },
    }
}

/// Counts keyed by text: adds one to `map[key]`, allocating the key only
/// the first time it is seen.
trait CountMap {
    fn bump(&mut self, key: &str);
}

impl CountMap for BTreeMap<String, u64> {
    fn bump(&mut self, key: &str) {
        match self.get_mut(key) {
            Some(c) => *c += 1,
            None => {
                self.insert(key.to_string(), 1);
            }
        }
    }
}

impl CountMap for HashMap<String, u64> {
    fn bump(&mut self, key: &str) {
        match self.get_mut(key) {
            Some(c) => *c += 1,
            None => {
                self.insert(key.to_string(), 1);
            }
        }
    }
}

impl Accumulator {
    fn add_folder(&mut self, dir: &Path, opts: &ReportOptions) -> Result<(), StatsError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest = shards::read_manifest(dir).map_err(|e| shards_error(e, &manifest_path))?;
        let encoding = manifest.image_policy.encoding;
        let mut rows_read = 0;
        let mut problems = Vec::new();
        for entry in &manifest.shards {
            let path = dir.join(&entry.file);
            if opts.verify_checksums {
                shards::verify_sha256(&path, &entry.sha256)
                    .map_err(|e| shards_error(e, &manifest_path))?;
            }
            let read = self.add_shard(&path, &manifest_path, encoding, manifest.source.name())?;
            if read != entry.rows {
                problems.push(format!(
                    "{}: {read} rows read, the manifest lists {}",
                    path.display(),
                    entry.rows
                ));
            }
            rows_read += read;
        }
        let rows_listed: u64 = manifest.shards.iter().map(|s| s.rows).sum();
        let counts = &manifest.counts;
        if !counts.reconciles() {
            problems.push(format!(
                "{}: seen {} ≠ written {} + filtered {} + rejected {}",
                manifest_path.display(),
                counts.seen,
                counts.written,
                counts.filtered,
                counts.rejected_total()
            ));
        }
        if rows_listed != counts.written {
            problems.push(format!(
                "{}: shards list {rows_listed} rows, counts say {} written",
                manifest_path.display(),
                counts.written
            ));
        }
        let logged = self.add_rejects(dir, counts.rejected_total(), &mut problems)?;
        let logged_total: u64 = logged.values().sum();
        for stage in Stage::ALL {
            let (in_log, in_manifest) = (
                logged.get(&stage).copied().unwrap_or(0),
                counts.rejected.get(&stage).copied().unwrap_or(0),
            );
            if in_log != in_manifest {
                problems.push(format!(
                    "{}: {in_log} `{}` rejects logged, the manifest counts {in_manifest}",
                    dir.join(REJECTS_FILE).display(),
                    stage.name()
                ));
            }
        }
        self.counts.add(counts);
        self.folders.push(FolderStats {
            path: dir.display().to_string(),
            source: manifest.source,
            encoding,
            shards: manifest.shards.len(),
            rows_listed,
            rows_read,
            counts: counts.clone(),
            rejects_logged: logged_total,
            reconciles: problems.is_empty(),
        });
        self.problems.extend(problems);
        Ok(())
    }

    /// Reads one shard, batch by batch; returns the rows read.
    fn add_shard(
        &mut self,
        path: &Path,
        manifest: &Path,
        encoding: ImageEncoding,
        expected_source: &str,
    ) -> Result<u64, StatsError> {
        let names = projected_columns();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let reader = shards::reader(path, &names, Some(BATCH_ROWS))
            .map_err(|e| shards_error(e, manifest))?;
        let mut rows = 0;
        let mut foreign = 0;
        for batch in reader {
            let batch = batch.map_err(|e| StatsError::Parquet {
                path: path.to_path_buf(),
                source: e.into(),
            })?;
            let cols = Columns::new(&batch, path).map_err(|e| shards_error(e, manifest))?;
            foreign += cols
                .source
                .iter()
                .filter(|s| *s != Some(expected_source))
                .count() as u64;
            self.add_batch(&cols, path, encoding);
            rows += batch.num_rows() as u64;
        }
        if foreign > 0 {
            self.problems.push(format!(
                "{}: {foreign} rows whose source is not `{expected_source}`, the manifest's source",
                path.display()
            ));
        }
        Ok(rows)
    }

    fn source_index(&mut self, name: &str) -> usize {
        if let Some(i) = self.sources.iter().position(|s| s == name) {
            return i;
        }
        self.sources.push(name.to_string());
        self.rows_per_source.push(0);
        self.by_source_split.push(BTreeMap::new());
        self.by_source_view.push(BTreeMap::new());
        self.labels.push(
            CHEXPERT_CLASSES
                .iter()
                .map(|(class, _)| LabelCounts {
                    class: class.to_string(),
                    ..Default::default()
                })
                .collect(),
        );
        self.orig_sizes.push(BTreeMap::new());
        self.stored_sizes.push(BTreeMap::new());
        self.intensity.push([0; 256]);
        self.sources.len() - 1
    }

    fn add_batch(&mut self, c: &Columns<'_>, path: &Path, encoding: ImageEncoding) {
        let n = c.source.len();
        self.rows += n as u64;
        self.paired += c.paired.true_count() as u64;

        let mut row_source = std::mem::take(&mut self.row_source);
        row_source.clear();
        for row in 0..n {
            // `source` is non-nullable in the schema; a null reads as "".
            let source = if c.source.is_null(row) {
                ""
            } else {
                c.source.value(row)
            };
            let s = self.source_index(source);
            row_source.push(s);
            self.rows_per_source[s] += 1;
            let split = if c.split.is_null(row) {
                ""
            } else {
                c.split.value(row)
            };
            let view = if c.view.is_null(row) {
                ""
            } else {
                c.view.value(row)
            };
            self.by_split.bump(split);
            self.by_view.bump(view);
            self.by_source_split[s].bump(split);
            self.by_source_view[s].bump(view);
        }

        self.add_labels(c, &row_source);
        self.add_finding_labels(c);
        self.add_text(c);
        self.add_entities(c);
        self.add_sizes(c, &row_source);
        self.add_intensity(c, &row_source, path, encoding);
        self.row_source = row_source;
    }

    fn add_labels(&mut self, c: &Columns<'_>, row_source: &[usize]) {
        for (class, column) in c.labels.iter().enumerate() {
            for (row, &s) in row_source.iter().enumerate() {
                let counts = &mut self.labels[s][class];
                match column.is_valid(row).then(|| column.value(row)) {
                    None => counts.blank += 1,
                    Some(1) => counts.positive += 1,
                    Some(0) => counts.negative += 1,
                    Some(-1) => counts.uncertain += 1,
                    Some(_) => counts.other += 1,
                }
            }
        }
    }

    fn add_finding_labels(&mut self, c: &Columns<'_>) {
        let list = c.finding_labels;
        let Some(values) = list.values().as_string_opt::<i32>() else {
            return;
        };
        let offsets = list.value_offsets();
        for row in 0..list.len() {
            if list.is_null(row) {
                continue;
            }
            let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
            if end > start {
                self.finding_label_rows += 1;
            }
            for i in start..end {
                if values.is_valid(i) {
                    self.finding_labels.bump(values.value(i));
                }
            }
        }
    }

    fn add_text(&mut self, c: &Columns<'_>) {
        for row in 0..c.text.len() {
            if c.text.is_valid(row) {
                self.reports += 1;
                *self
                    .chars
                    .entry(c.text.value(row).chars().count() as i64)
                    .or_default() += 1;
            }
            if c.token_ids.is_valid(row) {
                *self
                    .tokens
                    .entry(c.token_ids.value_length(row) as i64)
                    .or_default() += 1;
            }
        }
        self.truncated += c.truncated.true_count() as u64;
    }

    fn add_entities(&mut self, c: &Columns<'_>) {
        let spans = c.entity_spans;
        let fields = spans.values().as_struct_opt().and_then(|s| {
            let start = s
                .column_by_name(col::SPAN_START)?
                .as_primitive_opt::<Int32Type>()?;
            let end = s
                .column_by_name(col::SPAN_END)?
                .as_primitive_opt::<Int32Type>()?;
            let label = s.column_by_name(col::SPAN_LABEL)?.as_string_opt::<i32>()?;
            Some((start, end, label))
        });
        let offsets = spans.value_offsets();
        for row in 0..c.text.len() {
            if c.text.is_null(row) {
                continue;
            }
            let source = if c.entity_source.is_null(row) {
                "none"
            } else {
                c.entity_source.value(row)
            };
            self.entity_sources.bump(source);
            let (first, last) = if spans.is_valid(row) {
                (offsets[row] as usize, offsets[row + 1] as usize)
            } else {
                (0, 0)
            };
            *self
                .spans_per_report
                .entry((last - first) as i64)
                .or_default() += 1;
            let Some((starts, ends, labels)) = fields else {
                self.invalid_spans += (last - first) as u64;
                continue;
            };
            if last == first {
                continue;
            }
            // Spans count characters, not bytes: map character offsets to
            // byte offsets once per report.
            let text = c.text.value(row);
            self.char_starts.clear();
            self.char_starts.extend(text.char_indices().map(|(b, _)| b));
            self.char_starts.push(text.len());
            for i in first..last {
                self.entity_labels.bump(labels.value(i));
                let (start, end) = (starts.value(i), ends.value(i));
                let chars = self.char_starts.len() - 1;
                if start < 0 || end < start || end as usize > chars {
                    self.invalid_spans += 1;
                    continue;
                }
                let entity =
                    &text[self.char_starts[start as usize]..self.char_starts[end as usize]];
                // Count "Effusion" and "effusion " as one entity.
                self.entity_buf.clear();
                self.entity_buf
                    .extend(entity.trim().chars().flat_map(char::to_lowercase));
                self.entity_strings.bump(&self.entity_buf);
            }
        }
    }

    fn add_sizes(&mut self, c: &Columns<'_>, row_source: &[usize]) {
        let value = |a: &Int32Array, row: usize| a.is_valid(row).then(|| a.value(row));
        for (row, &s) in row_source.iter().enumerate() {
            let (h, w) = (value(c.image_height, row), value(c.image_width, row));
            let (r, k) = (value(c.orig_rows, row), value(c.orig_cols, row));
            for (counts, v) in [
                (&mut self.stored_height, h),
                (&mut self.stored_width, w),
                (&mut self.orig_rows, r),
                (&mut self.orig_cols, k),
            ] {
                if let Some(v) = v {
                    *counts.entry(v as i64).or_default() += 1;
                }
            }
            if let (Some(w), Some(h)) = (w, h) {
                *self.stored_sizes[s].entry((w, h)).or_default() += 1;
            }
            if let (Some(k), Some(r)) = (k, r) {
                *self.orig_sizes[s].entry((k, r)).or_default() += 1;
            }
        }
    }

    /// Decodes every image of the batch and adds its pixels to its source's
    /// histogram. Decoding is the one costly step of the report, so it runs
    /// on rayon's pool; each worker folds into its own histograms and they
    /// are summed at the end, so the result does not depend on the schedule.
    fn add_intensity(
        &mut self,
        c: &Columns<'_>,
        row_source: &[usize],
        path: &Path,
        encoding: ImageEncoding,
    ) {
        let sources = self.sources.len();
        let partial = (0..row_source.len())
            .into_par_iter()
            .fold(
                || Pixels::new(sources),
                |mut acc, row| {
                    match decode_row(c, row, encoding) {
                        Ok(pixels) => {
                            let hist = &mut acc.hist[row_source[row]];
                            for &v in pixels.iter() {
                                hist[v as usize] += 1;
                            }
                            acc.decoded += 1;
                            acc.pixels += pixels.len() as u64;
                        }
                        Err(reason) => acc.failures.push((row, reason)),
                    }
                    acc
                },
            )
            .reduce(|| Pixels::new(sources), Pixels::merge);
        for (total, part) in self.intensity.iter_mut().zip(&partial.hist) {
            for (t, p) in total.iter_mut().zip(part) {
                *t += p;
            }
        }
        self.decoded += partial.decoded;
        self.pixels += partial.pixels;
        self.undecodable += partial.failures.len() as u64;
        let mut failures = partial.failures;
        failures.sort_by_key(|(row, _)| *row);
        for (row, reason) in failures {
            if self.undecodable_examples.len() >= MAX_EXAMPLES {
                break;
            }
            let id = if c.image_id.is_null(row) {
                "?"
            } else {
                c.image_id.value(row)
            };
            self.undecodable_examples
                .push(format!("{id} in {}: {reason}", path.display()));
        }
    }

    fn add_rejects(
        &mut self,
        dir: &Path,
        expected: u64,
        problems: &mut Vec<String>,
    ) -> Result<BTreeMap<Stage, u64>, StatsError> {
        let path = dir.join(REJECTS_FILE);
        let mut by_stage = BTreeMap::new();
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if expected > 0 {
                    problems.push(format!(
                        "{}: missing, the manifest counts {expected} rejects",
                        path.display()
                    ));
                }
                return Ok(by_stage);
            }
            Err(source) => return Err(io(&path, source)),
        };
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|source| io(&path, source))?;
            if line.trim().is_empty() {
                continue;
            }
            let reject: Reject =
                serde_json::from_str(&line).map_err(|source| StatsError::Reject {
                    path: path.clone(),
                    line: i + 1,
                    source,
                })?;
            *by_stage.entry(reject.stage).or_default() += 1;
            self.reject_records += 1;
            *self.reject_stages.entry(reject.stage).or_default() += 1;
            let group = reason_group(&reject.reason);
            self.reject_reasons
                .entry((reject.stage, group))
                .or_insert_with(|| (0, reject.reason.clone()))
                .0 += 1;
        }
        Ok(by_stage)
    }

    fn finish(mut self) -> (Stats, Detail) {
        if self.undecodable > 0 {
            self.problems
                .push(format!("{} images could not be decoded", self.undecodable));
        }
        if self.invalid_spans > 0 {
            self.problems.push(format!(
                "{} entity spans do not fit their text",
                self.invalid_spans
            ));
        }
        let by_source = self
            .sources
            .iter()
            .cloned()
            .zip(self.rows_per_source.iter().copied())
            .collect();
        let mut reasons: Vec<ReasonCount> = self
            .reject_reasons
            .into_iter()
            .map(|((stage, reason), (count, example))| ReasonCount {
                stage,
                reason,
                count,
                example,
            })
            .collect();
        reasons.sort_by(|a, b| b.count.cmp(&a.count).then(a.stage.cmp(&b.stage)));
        let per_length = |counts: &ValueCounts| {
            let len = counts
                .keys()
                .next_back()
                .map_or(0, |&k| k.max(0) as usize + 1);
            let mut v = vec![0; len];
            for (&k, &n) in counts {
                v[k.max(0) as usize] += n;
            }
            v
        };
        let tokens_per_length = per_length(&self.tokens);
        let stats = Stats {
            rows: self.rows,
            paired: self.paired,
            unpaired: self.rows - self.paired,
            by_source,
            by_split: self.by_split,
            by_view: self.by_view,
            by_source_split: named(&self.sources, self.by_source_split),
            by_source_view: named(&self.sources, self.by_source_view),
            labels: named(&self.sources, self.labels),
            finding_labels: FindingLabelStats {
                rows_with_labels: self.finding_label_rows,
                labels: self.finding_labels.values().sum(),
                distinct: self.finding_labels.len() as u64,
                top: top(self.finding_labels, TOP_N),
            },
            text: TextStats {
                reports: self.reports,
                chars: summary(&self.chars),
                chars_histogram: histogram(&self.chars, 40),
                tokens: summary(&self.tokens),
                at_context: tokens_per_length.get(CONTEXT_LENGTH).copied().unwrap_or(0),
                tokens_per_length,
                context_length: CONTEXT_LENGTH as u32,
                truncated: self.truncated,
            },
            entities: EntityStats {
                reports: self.reports,
                spans: self
                    .spans_per_report
                    .iter()
                    .map(|(&k, &n)| k as u64 * n)
                    .sum(),
                per_report: summary(&self.spans_per_report),
                per_report_counts: per_length(&self.spans_per_report),
                by_source: self.entity_sources,
                by_label: self.entity_labels,
                distinct: self.entity_strings.len() as u64,
                top: top(self.entity_strings, TOP_N),
                invalid_spans: self.invalid_spans,
            },
            images: ImageStats {
                stored_height: summary(&self.stored_height),
                stored_width: summary(&self.stored_width),
                orig_rows: summary(&self.orig_rows),
                orig_cols: summary(&self.orig_cols),
                common_stored: common_sizes(&self.stored_sizes),
                common_orig: common_sizes(&self.orig_sizes),
                intensity: named(
                    &self.sources,
                    self.intensity.iter().map(|h| h.to_vec()).collect(),
                ),
                decoded: self.decoded,
                pixels: self.pixels,
                undecodable: self.undecodable,
                undecodable_examples: self.undecodable_examples,
            },
            rejects: RejectStats {
                records: self.reject_records,
                by_stage: self.reject_stages,
                reasons,
            },
            counts: self.counts,
            folders: self.folders,
            problems: self.problems,
            charts: Vec::new(),
        };
        let detail = Detail {
            orig_sizes: named(&self.sources, self.orig_sizes),
            stored_sizes: named(&self.sources, self.stored_sizes),
        };
        (stats, detail)
    }
}

/// Keys per-source values by the source's name.
fn named<T>(sources: &[String], values: Vec<T>) -> BTreeMap<String, T> {
    sources.iter().cloned().zip(values).collect()
}

/// The decoded pixels of one row, or why there are none.
fn decode_row<'a>(
    c: &Columns<'a>,
    row: usize,
    encoding: ImageEncoding,
) -> Result<Cow<'a, [u8]>, String> {
    let (h, w) = (c.image_height, c.image_width);
    if c.image.is_null(row) || h.is_null(row) || w.is_null(row) {
        return Err("null image or size".into());
    }
    let (height, width) = (h.value(row), w.value(row));
    if height < 0 || width < 0 {
        return Err(format!("negative size {width}×{height}"));
    }
    shards::decode_image(c.image.value(row), width as u32, height as u32, encoding)
        .map_err(|e| e.to_string())
}

/// Histograms of one worker's share of a batch.
struct Pixels {
    hist: Vec<[u64; 256]>,
    decoded: u64,
    pixels: u64,
    failures: Vec<(usize, String)>,
}

impl Pixels {
    fn new(sources: usize) -> Self {
        Pixels {
            hist: vec![[0; 256]; sources],
            decoded: 0,
            pixels: 0,
            failures: Vec::new(),
        }
    }

    fn merge(mut self, other: Pixels) -> Pixels {
        for (a, b) in self.hist.iter_mut().zip(&other.hist) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        self.decoded += other.decoded;
        self.pixels += other.pixels;
        self.failures.extend(other.failures);
        self
    }
}

/// The group a reject reason is counted in: the text before its first `:`
/// (the rest usually names a file or a value), digits as `#` so that
/// "expected 512 pixels" and "expected 640 pixels" group together, at most
/// [`REASON_CHARS`] characters.
pub(super) fn reason_group(reason: &str) -> String {
    let head = reason.split(':').next().unwrap_or(reason).trim();
    let mut group = String::new();
    let mut chars = 0;
    let mut in_digits = false;
    for ch in head.chars() {
        if chars == REASON_CHARS {
            group.push('…');
            break;
        }
        if ch.is_ascii_digit() {
            if !in_digits {
                group.push('#');
                chars += 1;
            }
            in_digits = true;
        } else {
            group.push(ch);
            chars += 1;
            in_digits = false;
        }
    }
    group
}

fn summary(counts: &ValueCounts) -> Summary {
    let count: u64 = counts.values().sum();
    if count == 0 {
        return Summary::default();
    }
    let sum: f64 = counts.iter().map(|(&v, &n)| v as f64 * n as f64).sum();
    // The lower median: the value at 0-based rank (count - 1) / 2.
    let rank = (count - 1) / 2;
    let mut seen = 0;
    let mut median = 0;
    for (&v, &n) in counts {
        seen += n;
        if seen > rank {
            median = v;
            break;
        }
    }
    Summary {
        count,
        min: *counts.keys().next().unwrap_or(&0),
        median,
        mean: sum / count as f64,
        max: *counts.keys().next_back().unwrap_or(&0),
    }
}

/// At most `max_bins` bins of a round width (1, 2 or 5 × 10^k).
fn histogram(counts: &ValueCounts, max_bins: i64) -> Histogram {
    let (Some(&lo), Some(&hi)) = (counts.keys().next(), counts.keys().next_back()) else {
        return Histogram::default();
    };
    let span = hi - lo + 1;
    let mut width = 1;
    'search: for scale in std::iter::successors(Some(1i64), |s| s.checked_mul(10)) {
        for step in [1, 2, 5] {
            width = step * scale;
            if (span + width - 1) / width <= max_bins {
                break 'search;
            }
        }
    }
    let start = lo.div_euclid(width) * width;
    let bins = ((hi - start) / width + 1) as usize;
    let mut out = vec![0; bins];
    for (&v, &n) in counts {
        out[((v - start) / width) as usize] += n;
    }
    Histogram {
        start,
        width,
        counts: out,
    }
}

/// The `n` most frequent values, ties broken by value so the list is stable.
fn top(counts: HashMap<String, u64>, n: usize) -> Vec<Frequency> {
    let mut all: Vec<Frequency> = counts
        .into_iter()
        .map(|(value, count)| Frequency { value, count })
        .collect();
    all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
    all.truncate(n);
    all
}

fn common_sizes(per_source: &[BTreeMap<(i32, i32), u64>]) -> Vec<Frequency> {
    let mut all: BTreeMap<(i32, i32), u64> = BTreeMap::new();
    for sizes in per_source {
        for (&size, &n) in sizes {
            *all.entry(size).or_default() += n;
        }
    }
    let mut sizes: Vec<_> = all.into_iter().collect();
    sizes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    sizes
        .into_iter()
        .take(TOP_SIZES)
        .map(|((w, h), count)| Frequency {
            value: format!("{w}×{h}"),
            count,
        })
        .collect()
}
