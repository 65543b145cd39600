//! `synth`: writes a seeded synthetic MIMIC-CXR + PadChest world.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use synth::{MimicFormat, SynthConfig};

/// Generate a synthetic chest X-ray world in the on-disk formats of
/// MIMIC-CXR (DICOM and/or JPG, reports, index CSVs, NER sidecar) and
/// PadChest (16-bit PNGs, labels CSV), with lesions.jsonl and world.json.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Output folder (missing, empty, or a previous world).
    #[arg(long)]
    out: PathBuf,
    /// MIMIC-CXR studies.
    #[arg(long, default_value_t = SynthConfig::default().studies)]
    studies: usize,
    /// PadChest images.
    #[arg(long, default_value_t = SynthConfig::default().padchest_images)]
    padchest_images: usize,
    /// Seed; the same arguments give byte-identical output.
    #[arg(long, default_value_t = SynthConfig::default().seed)]
    seed: u64,
    /// Image height in pixels.
    #[arg(long, default_value_t = SynthConfig::default().size)]
    size: u32,
    /// MIMIC image files to write.
    #[arg(long, value_enum, default_value = "dicom")]
    mimic_format: MimicFormat,
    /// Inject bad inputs (listed in faults.json) that ingest must reject.
    #[arg(long)]
    faults: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let cfg = SynthConfig {
        studies: a.studies,
        padchest_images: a.padchest_images,
        seed: a.seed,
        size: a.size,
        mimic_format: a.mimic_format,
        faults: a.faults,
    };
    let t0 = Instant::now();
    let s = synth::generate(&a.out, &cfg)
        .with_context(|| format!("generating a world in {}", a.out.display()))?;
    println!(
        "wrote {}: MIMIC {} subjects / {} studies / {} images ({} sidecar lines), PadChest {} patients / {} images, {} faults, {:.1} s",
        a.out.display(),
        s.mimic.subjects,
        s.mimic.studies,
        s.mimic.images,
        s.mimic.sidecar_lines,
        s.padchest.patients,
        s.padchest.images,
        s.faults.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
