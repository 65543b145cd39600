//! `synth`: writes a seeded synthetic MIMIC-CXR + PadChest world, and on
//! request CheXpert, ChestX-ray14, COVIDx and RSNA Pneumonia trees.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use synth::{MimicFormat, SynthConfig};

/// Generate a synthetic chest X-ray world in the on-disk formats of
/// MIMIC-CXR (DICOM and/or JPG, reports, index CSVs, NER sidecar) and
/// PadChest (16-bit PNGs, labels CSV), with lesions.jsonl and world.json;
/// and, when their sizes are given, CheXpert-v1.0-small, ChestX-ray14,
/// COVIDx and RSNA Pneumonia trees labelled from the lesions drawn into them.
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
    /// Images of a CheXpert-v1.0-small tree under `chexpert/` (0: none).
    #[arg(long, default_value_t = SynthConfig::default().chexpert_images)]
    chexpert_images: usize,
    /// Images of a ChestX-ray14 tree under `nih/` (0: none).
    #[arg(long, default_value_t = SynthConfig::default().nih_images)]
    nih_images: usize,
    /// Images of a COVIDx tree under `covidx/` (0: none).
    #[arg(long, default_value_t = SynthConfig::default().covidx_images)]
    covidx_images: usize,
    /// Patients (one DICOM each) of an RSNA Pneumonia tree under `rsna/`
    /// (0: none).
    #[arg(long, default_value_t = SynthConfig::default().rsna_images)]
    rsna_images: usize,
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
        chexpert_images: a.chexpert_images,
        nih_images: a.nih_images,
        covidx_images: a.covidx_images,
        rsna_images: a.rsna_images,
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
    let d = &s.downstream;
    for (name, tree) in [
        ("CheXpert", &d.chexpert),
        ("NIH", &d.nih),
        ("COVIDx", &d.covidx),
        ("RSNA", &d.rsna),
    ] {
        if let Some(t) = tree {
            println!(
                "  {name}: {} patients / {} images in {}",
                t.patients,
                t.images,
                a.out.join(&t.root).display()
            );
        }
    }
    Ok(())
}
