//! Loader throughput: images/s into ready 64×3×224×224 augmented batches at
//! 1 and 2 decode threads, next to the floor of reading the shard bytes;
//! then one evaluation pass over the paired rows at 2 threads, in batches of
//! one row against batches of 32 with the short last batch kept.
//!
//! `cargo run --release -p pipeline --example loader_bench -- PAIRED_DIR [UNPAIRED_DIR] [BATCHES]`
//! (see `bench/loader/README.md`).

use std::path::PathBuf;
use std::time::Instant;

use pipeline::{Loader, LoaderConfig, OpenOptions, Position, Sources};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let paired = vec![PathBuf::from(
        args.first()
            .ok_or("usage: loader_bench PAIRED_DIR [UNPAIRED_DIR] [BATCHES]")?,
    )];
    let unpaired: Vec<PathBuf> = args.get(1).map(PathBuf::from).into_iter().collect();
    let batches: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(40);
    let open = || {
        Sources::open(
            &paired,
            &unpaired,
            &OpenOptions {
                verify_sha256: false,
                split: None,
            },
        )
    };

    // Floor: read every shard's bytes (warm page cache after the first pass).
    let files: Vec<PathBuf> = paired
        .iter()
        .chain(&unpaired)
        .flat_map(|d| std::fs::read_dir(d).unwrap().flatten().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    let s = open()?;
    let rows =
        s.paired.as_ref().map_or(0, |p| p.len()) + s.unpaired.as_ref().map_or(0, |p| p.len());
    let start = Instant::now();
    let bytes: usize = files
        .iter()
        .map(|f| std::fs::read(f).map(|b| b.len()).unwrap_or(0))
        .sum();
    let t = start.elapsed().as_secs_f64();
    println!(
        "floor: read {} shards, {:.1} MB, {rows} rows in {t:.3} s = {:.0} images/s",
        files.len(),
        bytes as f64 / 1e6,
        rows as f64 / t
    );

    let paired_fraction = if unpaired.is_empty() { 1.0 } else { 0.75 };
    for threads in [1, 2] {
        let cfg = LoaderConfig {
            batch_size: 64,
            paired_fraction,
            threads,
            prefetch: 4,
            ..Default::default()
        };
        let mut loader = Loader::new(open()?, &cfg, Position::default())?;
        // Warm-up batch: thread start, first row groups.
        let first = loader.next().ok_or("no batch")??;
        assert_eq!(first.images_shape(), [64, 3, 224, 224]);
        let start = Instant::now();
        let mut n = 0;
        for _ in 0..batches {
            let b = loader.next().ok_or("loader ended")??;
            n += b.size;
            loader.recycle(b);
        }
        let t = start.elapsed().as_secs_f64();
        let st = loader.stats();
        println!(
            "threads {threads}: {n} images in {t:.2} s = {:.0} images/s (read {:.0} µs/img, decode stage {:.0} µs/img wall, consumer waited {:.0}%)",
            n as f64 / t,
            st.read_us_per_sample,
            st.decode_us_per_sample,
            100.0 * st.consumer_wait_share
        );
    }

    // Evaluation pass: every paired row once, resize + centre crop.
    let total = open()?.paired.as_ref().map_or(0, |p| p.len());
    for (batch_size, keep_last_partial) in [(1, false), (32, true)] {
        let cfg = LoaderConfig {
            batch_size,
            paired_fraction: 1.0,
            keep_last_partial,
            threads: 2,
            prefetch: if batch_size == 1 { 64 } else { 2 },
            ..LoaderConfig::eval()
        };
        let start = Instant::now();
        let mut n = 0;
        for b in Loader::new(open()?, &cfg, Position::default())? {
            n += b?.size;
        }
        let t = start.elapsed().as_secs_f64();
        println!(
            "eval pass, batch {batch_size}: {n} of {total} rows in {t:.2} s = {:.0} images/s",
            n as f64 / t
        );
    }
    Ok(())
}
