//! Linear-probe fitting time for the 14 CheXpert classes on synthetic
//! embeddings, one class after another against the classes side by side on
//! a pool of 2 threads (as `train eval linear-probe` fits them).
//!
//! `cargo run --release -p evaluation --example probe_bench -- [ROWS] [DIM]`
//! (defaults 20000 and 512; see `bench/RESULTS.md`).

use std::time::Instant;

use evaluation::probe::{ProbeConfig, fit_logistic};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

const CLASSES: usize = 14;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rows: usize = args
        .first()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let dim: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(512);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let x: Vec<f32> = (0..rows * dim)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    // Each class: a random direction, a threshold for a ~20% prevalence,
    // label noise, and a third of the rows unlabelled or uncertain.
    let labels: Vec<Vec<i8>> = (0..CLASSES)
        .map(|_| {
            let w: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            x.chunks_exact(dim)
                .map(|r| {
                    let s: f32 = r.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>()
                        + rng.random_range(-2.0f32..2.0);
                    match rng.random_range(0..6) {
                        0 => i8::MIN,
                        1 => -1,
                        _ => i8::from(s > 4.0),
                    }
                })
                .collect()
        })
        .collect();
    let cfg = ProbeConfig::default();
    let fit = |y: &Vec<i8>| {
        let m = fit_logistic(&x, dim, y, &cfg).expect("labelled rows");
        (m.iterations, m.weights[0])
    };

    let start = Instant::now();
    let one: Vec<_> = labels.iter().map(fit).collect();
    let t1 = start.elapsed().as_secs_f64();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;
    let start = Instant::now();
    let two: Vec<_> = pool.install(|| labels.par_iter().map(fit).collect());
    let t2 = start.elapsed().as_secs_f64();
    assert_eq!(one, two, "the fits depend on the thread they ran on");
    let iterations: usize = one.iter().map(|f| f.0).sum();
    println!(
        "{CLASSES} classes, {rows} rows × {dim}, {iterations} gradient steps in all: \
         one after another {t1:.2} s, side by side on 2 threads {t2:.2} s ({:.2}×)",
        t1 / t2
    );
    Ok(())
}
