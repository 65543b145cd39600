//! `ingest`: the command line over the `ingest` library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ingest::chexpert::ChexpertOptions;
use ingest::covidx::CovidxOptions;
use ingest::mimic::{Labeler, MimicOptions};
use ingest::nih::{NihOptions, NihSplit};
use ingest::padchest::PadchestOptions;
use ingest::rsna::RsnaOptions;
use ingest::shard::{Part, ShardOptions};
use schemas::{ImageEncoding, ImagePolicy, Manifest, WindowPolicy};
use text::report::Section;

#[derive(Parser)]
#[command(
    name = "ingest",
    version,
    about = "Turn MIMIC-CXR, PadChest, COVIDx, ChestX-ray14, CheXpert and RSNA Pneumonia releases into Parquet shards"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Worker threads for decoding (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Also show the codec libraries' own log lines (OpenJPEG's INFO lines
    /// for every JPEG 2000 image); twice: debug lines too. `RUST_LOG`, when
    /// set, decides instead.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// The log filter when `RUST_LOG` is not set: this project's INFO lines,
/// and the third-party libraries' only from WARN up unless `-v` is given
/// (OpenJPEG logs several INFO lines per JPEG 2000 image it decodes).
fn log_filter(verbose: u8) -> String {
    match verbose {
        0 => "warn,ingest=info".to_string(),
        1 => "info".to_string(),
        _ => "debug".to_string(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Ingest a MIMIC-CXR (DICOM) or MIMIC-CXR-JPG release.
    Mimic(MimicArgs),
    /// Ingest PadChest images (unpaired rows).
    Padchest(PadchestArgs),
    /// Ingest a COVIDx CXR release (unpaired rows, label in `finding_labels`).
    Covidx(CovidxArgs),
    /// Ingest NIH ChestX-ray14 (unpaired rows, its 14 classes in `finding_labels`).
    Nih(NihArgs),
    /// Ingest CheXpert (unpaired rows, the 14 CheXpert label columns).
    Chexpert(ChexpertArgs),
    /// Ingest the RSNA Pneumonia Detection Challenge (unpaired rows, pneumonia
    /// in `finding_labels`, its boxes in `boxes.jsonl`).
    #[command(alias = "rsna-pneumonia")]
    Rsna(RsnaArgs),
    /// Combine the part folders of a partitioned run (`--part I/N`) into the
    /// folder a whole run would have written.
    Merge {
        /// The part folders, every part 1..N once (`--parts a b c` or repeated).
        #[arg(long = "parts", required = true, num_args = 1..)]
        parts: Vec<PathBuf>,
        /// Output folder (a killed merge is completed by running it again).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a statistics report (Markdown, JSON, PNG charts) of shard folders.
    Stats {
        /// A shard folder; repeat for several.
        #[arg(long = "shards", required = true)]
        shards: Vec<PathBuf>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Skip checking each shard's sha256 against its manifest (faster;
        /// a damaged shard then gives wrong figures instead of an error).
        #[arg(long)]
        no_verify: bool,
    },
    /// Export each study's training text as JSON Lines, for `python/ner_sidecar.py`.
    Sections {
        /// The release root.
        #[arg(long)]
        root: PathBuf,
        /// Report sections that make the training text.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "findings,impression,last_paragraph"
        )]
        sections: Vec<Section>,
        /// Output `.jsonl` file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Tokenize texts as ingest does (cleaning, CLIP BPE, truncation at 77).
    Tokenize {
        /// CLIP `tokenizer.json`.
        #[arg(long, env = "MMCLIP_TOKENIZER")]
        tokenizer: PathBuf,
        /// JSON Lines input, one `{"text": ...}` per line.
        #[arg(long)]
        texts: PathBuf,
        /// JSON Lines output, one `{"text", "ids", "truncated"}` per input line.
        #[arg(long)]
        out: PathBuf,
    },
    /// Build CLIP's `tokenizer.json` from `bpe_simple_vocab_16e6.txt.gz`.
    Tokenizer {
        /// The gzipped BPE vocabulary (ships in the `open_clip_torch` wheel).
        #[arg(long)]
        vocab: PathBuf,
        /// Output `tokenizer.json`.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Window {
    /// Min–max to 8 bits then histogram equalisation (MIMIC-CXR-JPG parity).
    MimicJpg,
    /// DICOM WindowCenter/Width or VOI LUT.
    Voi,
    /// Clip to percentiles, then scale.
    Percentile,
}

#[derive(Clone, Copy, ValueEnum)]
enum Encoding {
    Raw,
    Png,
    Jpeg,
}

/// Image and shard options shared by both sources.
#[derive(Args)]
struct Common {
    /// Output folder (resumed when it holds an interrupted run with the same arguments).
    #[arg(long)]
    out: PathBuf,
    /// Short side of the stored image; the aspect ratio is kept.
    #[arg(long, default_value_t = ImagePolicy::default().short_side)]
    short_side: u32,
    /// Lower percentile for the `percentile` window.
    #[arg(long, default_value_t = 0.5)]
    percentile_low: f32,
    /// Upper percentile for the `percentile` window.
    #[arg(long, default_value_t = 99.5)]
    percentile_high: f32,
    /// Storage encoding of the image column.
    #[arg(long, value_enum, default_value = "raw")]
    encoding: Encoding,
    /// JPEG quality when `--encoding jpeg`.
    #[arg(long, default_value_t = 95)]
    jpeg_quality: u8,
    /// Do not apply RescaleSlope/Intercept.
    #[arg(long)]
    no_rescale: bool,
    /// Keep MONOCHROME1 images as stored instead of inverting them.
    #[arg(long)]
    no_invert: bool,
    /// Input rows per shard.
    #[arg(long, default_value_t = ShardOptions::default().rows_per_shard)]
    rows_per_shard: usize,
    /// Rows per Parquet row group.
    #[arg(long, default_value_t = ShardOptions::default().row_group_rows)]
    row_group_rows: usize,
    /// Exit non-zero at the first rejected row.
    #[arg(long)]
    strict: bool,
    /// Reject input images whose short side is below this many pixels
    /// (rather than scaling them up to a flat image).
    #[arg(long, default_value_t = ImagePolicy::default().min_side,
          value_parser = clap::value_parser!(u32).range(1..))]
    min_side: u32,
    /// Reject input images whose long side exceeds this many times the
    /// short side (a finite number, at least 1).
    #[arg(long, default_value_t = ImagePolicy::default().max_aspect, value_parser = parse_max_aspect)]
    max_aspect: f32,
    /// Reject input images of more than this many pixels (width × height)
    /// before decoding them: a decode's memory grows with the input's size.
    #[arg(long, default_value_t = ImagePolicy::default().max_pixels,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_pixels: u64,
    /// An index CSV that ends early (truncated gzip, read error) rejects the
    /// rows it no longer covers instead of stopping the run.
    #[arg(long)]
    allow_truncated_csv: bool,
    /// Write only part I of N of the planned rows (1-based, e.g. `2/3`), for
    /// one task of a job array; `ingest merge` combines the N part folders
    /// into the folder a whole run writes. The parts must be run with the
    /// same other arguments.
    #[arg(long, value_name = "I/N")]
    part: Option<Part>,
}

/// `--max-aspect`: finite and at least 1, so that it can refuse something
/// and can be written to the manifest (JSON has no infinity).
fn parse_max_aspect(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(v) if v.is_finite() && v >= 1.0 => Ok(v),
        _ => Err(format!("{text:?} is not a finite ratio of at least 1")),
    }
}

impl Common {
    fn window(&self, w: Window) -> WindowPolicy {
        match w {
            Window::MimicJpg => WindowPolicy::MimicJpg,
            Window::Voi => WindowPolicy::Voi,
            Window::Percentile => WindowPolicy::Percentile {
                low: self.percentile_low,
                high: self.percentile_high,
            },
        }
    }

    fn policy(&self, dicom_window: Window, png_window: Window) -> ImagePolicy {
        ImagePolicy {
            short_side: self.short_side,
            rescale: !self.no_rescale,
            invert_monochrome1: !self.no_invert,
            dicom_window: self.window(dicom_window),
            png_window: self.window(png_window),
            encoding: match self.encoding {
                Encoding::Raw => ImageEncoding::Raw,
                Encoding::Png => ImageEncoding::Png,
                Encoding::Jpeg => ImageEncoding::Jpeg {
                    quality: self.jpeg_quality,
                },
            },
            min_side: self.min_side,
            max_aspect: self.max_aspect,
            max_pixels: self.max_pixels,
        }
    }

    fn shards(&self) -> ShardOptions {
        ShardOptions {
            rows_per_shard: self.rows_per_shard,
            row_group_rows: self.row_group_rows,
            strict: self.strict,
            part: self.part,
            ..ShardOptions::default()
        }
    }
}

#[derive(Args)]
struct MimicArgs {
    /// The release root: holds `files/` and `mimic-cxr-2.0.0-*.csv[.gz]`.
    #[arg(long)]
    root: PathBuf,
    /// CLIP `tokenizer.json` (built by `ingest tokenizer`, or Hugging Face's).
    #[arg(long, env = "MMCLIP_TOKENIZER")]
    tokenizer: PathBuf,
    /// ScispaCy sidecar (JSON Lines); without it the built-in lexicon marks entities.
    #[arg(long)]
    ner: Option<PathBuf>,
    /// Views kept, comma-separated; `all` keeps every view.
    #[arg(long, value_delimiter = ',', default_value = "PA,AP")]
    views: Vec<String>,
    /// Report sections that make the training text.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "findings,impression,last_paragraph"
    )]
    sections: Vec<Section>,
    /// Label source.
    #[arg(long, value_enum, default_value = "chexpert")]
    labeler: Labeler,
    /// Window for DICOM pixels.
    #[arg(long, value_enum, default_value = "mimic-jpg")]
    window: Window,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct PadchestArgs {
    /// Folder with the PadChest CSV and the numbered image folders.
    #[arg(long)]
    root: PathBuf,
    /// Required: PadChest rows are written without reports (they are Spanish).
    #[arg(long)]
    images_only: bool,
    /// Projections kept, comma-separated; `all` keeps every projection.
    #[arg(long, value_delimiter = ',', default_value = "PA,AP,AP_horizontal")]
    projections: Vec<String>,
    /// Share of patients in train.
    #[arg(long, default_value_t = 0.8)]
    train_fraction: f64,
    /// Share of patients in validate (the rest is test).
    #[arg(long, default_value_t = 0.1)]
    validate_fraction: f64,
    /// Seed of the patient-level split.
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
    /// Window from 16 bits to 8.
    #[arg(long, value_enum, default_value = "percentile")]
    window: Window,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct CovidxArgs {
    /// Folder with `train.txt`/`val.txt`/`test.txt` (or versioned names such
    /// as `train_COVIDx9A.txt`) and the `train/`, `val/`, `test/` image folders.
    #[arg(long)]
    root: PathBuf,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct NihArgs {
    /// Folder with `Data_Entry_2017[_v2020].csv`, the split lists and
    /// `images/` or `images_001/images/` … `images_012/images/`.
    #[arg(long)]
    root: PathBuf,
    /// `official`: the release's test list, validation carved from
    /// train_val by patient; `paper`: patient-level 70/10/20.
    #[arg(long, value_enum, default_value = "official")]
    split: NihSplit,
    /// Share of train_val patients in validate (`--split official`).
    #[arg(long, default_value_t = 0.1)]
    validate_fraction: f64,
    /// Seed of the patient-level split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Views kept (`View Position`), comma-separated; `all` keeps every view.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    views: Vec<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct ChexpertArgs {
    /// The folder above `CheXpert-v1.0/` or `CheXpert-v1.0-small/` (as the
    /// CSVs' `Path` column counts from), or the dataset folder itself.
    #[arg(long)]
    root: PathBuf,
    /// Views kept (`AP/PA`, else `Frontal/Lateral`), comma-separated; `all`
    /// keeps every view.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    views: Vec<String>,
    /// A label CSV to read instead of those found in the dataset folder
    /// (repeat for several); its name gives the split (`train*`, `valid*`,
    /// `test*`).
    #[arg(long = "csv")]
    csvs: Vec<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct RsnaArgs {
    /// Folder with `stage_2_train_labels.csv`, `stage_2_detailed_class_info.csv`
    /// and `stage_2_train_images/`.
    #[arg(long)]
    root: PathBuf,
    /// Share of patients in train.
    #[arg(long, default_value_t = ingest::rsna::DEFAULT_SPLIT_FRACTIONS.0)]
    train_fraction: f64,
    /// Share of patients in validate (the rest is test).
    #[arg(long, default_value_t = ingest::rsna::DEFAULT_SPLIT_FRACTIONS.1)]
    validate_fraction: f64,
    /// Seed of the patient-level split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Views kept (each DICOM's ViewPosition, `PA` or `AP`), comma-separated;
    /// `all` keeps every view.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    views: Vec<String>,
    /// Window for the DICOM pixels. The release's DICOMs hold the 8-bit
    /// ChestX-ray14 images, already windowed for display and without window
    /// attributes, so `voi` falls back to min–max and keeps them as
    /// `ingest nih` keeps the same images.
    #[arg(long, value_enum, default_value = "voi")]
    window: Window,
    #[command(flatten)]
    common: Common,
}

fn all_or(list: Vec<String>) -> Vec<String> {
    if list.iter().any(|v| v.eq_ignore_ascii_case("all")) {
        Vec::new()
    } else {
        list
    }
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {pos}/{len} rows [{elapsed_precise}] {bar:40} {per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    bar
}

fn summarise(out: &Path, m: &Manifest) {
    let c = &m.counts;
    println!(
        "{}: {} rows written in {} shards; seen {}, filtered {}, rejected {}{}",
        out.display(),
        c.written,
        m.shards.len(),
        c.seen,
        c.filtered,
        c.rejected_total(),
        if c.rejected_total() > 0 {
            format!(" (see {})", out.join(schemas::REJECTS_FILE).display())
        } else {
            String::new()
        }
    );
}

/// A path as the run records it: absolute, without `.` components or a
/// trailing slash, so that `./world`, `world/` and `/abs/world` are one
/// argument. Symlinks and `..` are kept: resolving them could name another
/// folder than the user did.
fn normalise(path: &Path) -> PathBuf {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .components()
        .collect()
}

/// Normalises the paths that are recorded as arguments, and refuses an
/// `--out` that is not a folder before any work (one error naming the flag).
fn check_paths(command: &mut Command) -> Result<()> {
    let out = match command {
        Command::Mimic(a) => {
            a.root = normalise(&a.root);
            a.tokenizer = normalise(&a.tokenizer);
            a.ner = a.ner.as_deref().map(normalise);
            &a.common.out
        }
        Command::Padchest(a) => {
            a.root = normalise(&a.root);
            &a.common.out
        }
        Command::Covidx(a) => {
            a.root = normalise(&a.root);
            &a.common.out
        }
        Command::Nih(a) => {
            a.root = normalise(&a.root);
            &a.common.out
        }
        Command::Chexpert(a) => {
            a.root = normalise(&a.root);
            a.csvs = a.csvs.iter().map(PathBuf::as_path).map(normalise).collect();
            &a.common.out
        }
        Command::Rsna(a) => {
            a.root = normalise(&a.root);
            &a.common.out
        }
        Command::Stats { out, .. } => out,
        Command::Merge { out, .. } => out,
        _ => return Ok(()),
    };
    if out.exists() && !out.is_dir() {
        bail!(
            "--out {}: is a file, not a folder; give a folder (it is created if missing)",
            out.display()
        );
    }
    Ok(())
}

fn run(mut cli: Cli) -> Result<()> {
    check_paths(&mut cli.command)?;
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting up the thread pool")?;
    }
    match cli.command {
        Command::Mimic(a) => {
            let opts = MimicOptions {
                root: a.root,
                views: all_or(a.views),
                sections: a.sections,
                labeler: a.labeler,
                tokenizer: a.tokenizer,
                ner: a.ner,
                image: a.common.policy(a.window, Window::Percentile),
                shards: a.common.shards(),
                allow_truncated_csv: a.common.allow_truncated_csv,
            };
            let bar = progress_bar();
            let m = ingest::mimic::run(&opts, &a.common.out, &bar).context("ingest mimic")?;
            bar.finish_and_clear();
            summarise(&a.common.out, &m);
        }
        Command::Padchest(a) => {
            if !a.images_only {
                bail!(
                    "pass --images-only: PadChest rows are ingested without reports (they are in Spanish)"
                );
            }
            let opts = PadchestOptions {
                root: a.root,
                projections: all_or(a.projections),
                split_fractions: (a.train_fraction, a.validate_fraction),
                split_seed: a.split_seed,
                image: a.common.policy(Window::MimicJpg, a.window),
                shards: a.common.shards(),
                allow_truncated_csv: a.common.allow_truncated_csv,
            };
            let bar = progress_bar();
            let m = ingest::padchest::run(&opts, &a.common.out, &bar).context("ingest padchest")?;
            bar.finish_and_clear();
            summarise(&a.common.out, &m);
        }
        Command::Covidx(a) => {
            if a.common.allow_truncated_csv {
                bail!("--allow-truncated-csv: a COVIDx release has no index CSV");
            }
            let opts = CovidxOptions {
                root: a.root,
                image: a.common.policy(Window::MimicJpg, Window::Percentile),
                shards: a.common.shards(),
            };
            let bar = progress_bar();
            let m = ingest::covidx::run(&opts, &a.common.out, &bar).context("ingest covidx")?;
            bar.finish_and_clear();
            summarise(&a.common.out, &m);
        }
        Command::Nih(a) => {
            let opts = NihOptions {
                root: a.root,
                views: all_or(a.views),
                split: a.split,
                validate_fraction: a.validate_fraction,
                seed: a.seed,
                image: a.common.policy(Window::MimicJpg, Window::Percentile),
                shards: a.common.shards(),
                allow_truncated_csv: a.common.allow_truncated_csv,
            };
            let bar = progress_bar();
            let m = ingest::nih::run(&opts, &a.common.out, &bar).context("ingest nih")?;
            bar.finish_and_clear();
            summarise(&a.common.out, &m);
        }
        Command::Chexpert(a) => {
            let opts = ChexpertOptions {
                root: a.root,
                csvs: a.csvs,
                views: all_or(a.views),
                image: a.common.policy(Window::MimicJpg, Window::Percentile),
                shards: a.common.shards(),
                allow_truncated_csv: a.common.allow_truncated_csv,
            };
            let bar = progress_bar();
            let m = ingest::chexpert::run(&opts, &a.common.out, &bar).context("ingest chexpert")?;
            bar.finish_and_clear();
            summarise(&a.common.out, &m);
        }
        Command::Rsna(a) => {
            if a.common.allow_truncated_csv {
                bail!(
                    "--allow-truncated-csv: an RSNA labels file cut short may cut a patient's boxes; repair the file instead"
                );
            }
            if a.common.part.is_some() {
                bail!(
                    "--part: `ingest merge` does not combine the parts' boxes.jsonl; ingest the RSNA release whole"
                );
            }
            let opts = RsnaOptions {
                root: a.root,
                split_fractions: (a.train_fraction, a.validate_fraction),
                seed: a.seed,
                views: all_or(a.views),
                image: a.common.policy(a.window, Window::Percentile),
                shards: a.common.shards(),
            };
            let bar = progress_bar();
            let m = ingest::rsna::run(&opts, &a.common.out, &bar).context("ingest rsna")?;
            bar.finish_and_clear();
            summarise(&a.common.out, &m);
        }
        Command::Merge { parts, out } => {
            let m = ingest::merge::merge(&parts, &out).context("ingest merge")?;
            summarise(&out, &m);
        }
        Command::Stats {
            shards,
            out,
            no_verify,
        } => {
            let opts = stats::ReportOptions {
                verify_checksums: !no_verify,
            };
            stats::write_report_with(&shards, &out, &opts).context("ingest stats")?;
            println!("{}", out.join("stats.md").display());
        }
        Command::Sections {
            root,
            sections,
            out,
        } => {
            let (written, missing) = ingest::mimic::export_sections(&root, &sections, &out)
                .context("ingest sections")?;
            println!(
                "{}: {written} studies ({missing} without usable sections)",
                out.display()
            );
        }
        Command::Tokenize {
            tokenizer,
            texts,
            out,
        } => {
            let tok = text::tokenize::ClipTokenizer::from_file(&tokenizer)?;
            let input =
                std::fs::read_to_string(&texts).with_context(|| texts.display().to_string())?;
            let mut lines = Vec::new();
            for (i, line) in input
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let v: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("{}:{}: not JSON", texts.display(), i + 1))?;
                let Some(raw) = v.get("text").and_then(|t| t.as_str()) else {
                    bail!("{}:{}: no \"text\" string", texts.display(), i + 1);
                };
                let text = text::report::clean_section(raw);
                let t = tok.encode(&text)?;
                let rec = serde_json::json!({"text": text, "ids": t.ids, "truncated": t.truncated});
                lines.push(rec.to_string());
            }
            lines.push(String::new());
            ingest::shard::write_atomic(&out, lines.join("\n").as_bytes())?;
            println!("{}: {} texts", out.display(), lines.len() - 1);
        }
        Command::Tokenizer { vocab, out } => {
            let json = text::tokenize::build_tokenizer_json(&vocab)?;
            ingest::shard::write_atomic(&out, json.as_bytes())?;
            println!("{}", out.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    keep_freed_buffers();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| log_filter(cli.verbose).into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: an error that
/// shows its source in its own message (`{path}: {source}`) would otherwise
/// print that source twice.
fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Let freed image buffers be reused by the next image rather than given
/// back to the kernel after each one.
///
/// Every image allocates and frees a few buffers of its full size (the file,
/// the parsed or decoded samples, the rendered bytes: 5 to 12 MB each at
/// 2500 px). glibc's defaults return such memory to the kernel (by `munmap`
/// above its adaptive mmap threshold, by trimming the heap top above 128 KiB
/// or twice that threshold) and the next image then faults every page in
/// again: measured, about 5,600 page faults and 14 ms of system time per
/// 2500-px DICOM image, 20 % of its CPU time. Buffers up to 32 MiB (glibc's
/// largest threshold; 3000 × 3000 × 2 bytes is 18 MB) are therefore served
/// from the heap, and up to 64 MiB of free heap top (a few images' buffers)
/// is kept. Peak memory stays bounded by the per-thread working set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_buffers() {
    // From glibc's <malloc.h>.
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // SAFETY: `mallopt` only sets allocator parameters; it is called before
    // any other thread exists. A refused value (return 0) leaves the
    // default, which is correct, only slower.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// Other allocators and platforms: their defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_buffers() {}
