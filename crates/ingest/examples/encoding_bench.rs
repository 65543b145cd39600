//! Which storage encoding should the `image` column use? For every image of
//! a raw-encoded shard folder, re-encode it as raw, PNG and JPEG, write each
//! variant as a shard, and measure what the loader pays per image: reading
//! the column back (Parquet + zstd) and decoding to pixels, plus disk bytes.
//!
//! `cargo run --release -p ingest --example encoding_bench -- SHARD_DIR [SHARD_DIR ...]`

use std::path::PathBuf;
use std::time::Instant;

use arrow_array::cast::AsArray;
use arrow_array::types::Int32Type;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use schemas::{ImageEncoding, col};

fn main() -> anyhow::Result<()> {
    let dirs: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    anyhow::ensure!(
        !dirs.is_empty(),
        "usage: encoding_bench SHARD_DIR [SHARD_DIR ...]"
    );
    let mut rows = Vec::new();
    for dir in &dirs {
        let manifest: schemas::Manifest =
            serde_json::from_slice(&std::fs::read(dir.join(schemas::MANIFEST_FILE))?)?;
        anyhow::ensure!(
            manifest.image_policy.encoding == ImageEncoding::Raw,
            "{}: not raw",
            dir.display()
        );
        for s in &manifest.shards {
            rows.extend(ingest::shard::read_shard(&dir.join(&s.file))?);
        }
    }
    let pixels: usize = rows.iter().map(|r| r.image.len()).sum();
    println!(
        "{} images, {:.1} MB of 8-bit pixels\n",
        rows.len(),
        pixels as f64 / 1e6
    );
    println!("| encoding | shard MB | bytes/pixel | encode µs/img | read+decode µs/img |");
    println!("|---|---:|---:|---:|---:|");
    let tmp = tempfile::tempdir()?;
    for (name, enc) in [
        ("raw + zstd", ImageEncoding::Raw),
        ("png", ImageEncoding::Png),
        ("jpeg q95", ImageEncoding::Jpeg { quality: 95 }),
    ] {
        let t = Instant::now();
        let mut variant = rows.clone();
        for r in &mut variant {
            r.image =
                ingest::encode::encode(&r.image, r.image_width as u32, r.image_height as u32, enc)?;
        }
        let encode_us = t.elapsed().as_secs_f64() * 1e6 / rows.len() as f64;
        let bytes = ingest::shard::encode_shard(&variant, &Default::default())
            .map_err(anyhow::Error::msg)?;
        let path = tmp
            .path()
            .join(format!("{}.parquet", name.replace(' ', "_")));
        std::fs::write(&path, &bytes)?;

        // What a loader does: read the image column and its shape, decode every image.
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let builder = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path)?)?;
            let mask = ProjectionMask::columns(
                builder.parquet_schema(),
                [col::IMAGE, col::IMAGE_HEIGHT, col::IMAGE_WIDTH],
            );
            let mut checksum = 0u64;
            for batch in builder.with_projection(mask).build()? {
                let batch = batch?;
                let images = batch
                    .column_by_name(col::IMAGE)
                    .unwrap()
                    .as_binary::<i32>()
                    .clone();
                let h = batch
                    .column_by_name(col::IMAGE_HEIGHT)
                    .unwrap()
                    .as_primitive::<Int32Type>()
                    .clone();
                let w = batch
                    .column_by_name(col::IMAGE_WIDTH)
                    .unwrap()
                    .as_primitive::<Int32Type>()
                    .clone();
                for i in 0..batch.num_rows() {
                    let px = ingest::encode::decode(
                        images.value(i),
                        w.value(i) as u32,
                        h.value(i) as u32,
                        enc,
                    )?;
                    checksum += u64::from(px[px.len() / 2]);
                }
            }
            std::hint::black_box(checksum);
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "| {name} | {:.2} | {:.3} | {:.0} | {:.0} |",
            bytes.len() as f64 / 1e6,
            bytes.len() as f64 / pixels as f64,
            encode_us,
            best * 1e6 / rows.len() as f64
        );
    }
    Ok(())
}
