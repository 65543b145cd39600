//! Text reaches the tokenizer through one cleaning: a line that `train embed
//! --texts` reads raw embeds exactly as its cleaned form, the form ingest
//! stores for reports and OpenAI's pipeline tokenizes.

use std::path::Path;

use crate::train::trained;
use crate::util::run_ok;

#[test]
fn embed_texts_cleans_lines_as_ingest_cleans_reports() {
    let run_dir = trained();
    let dir = tempfile::tempdir().unwrap();
    let raw = [
        "small left pleural effusion &amp;amp; no pneumothorax",
        "\u{201c}mild\u{201d}   cardiomegaly,\tstable",
        "\u{fb01}brosis at the right apex",
    ];
    let clean = [
        "small left pleural effusion & no pneumothorax",
        "\"mild\" cardiomegaly, stable",
        "fibrosis at the right apex",
    ];
    let embed = |lines: &[&str], name: &str| {
        let texts = dir.path().join(format!("{name}.txt"));
        std::fs::write(&texts, lines.join("\n") + "\n").unwrap();
        let out = dir.path().join(format!("{name}.parquet"));
        run_ok(
            "train",
            &[
                "embed",
                "--weights",
                run_dir.to_str().unwrap(),
                "--texts",
                texts.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--device",
                "cpu",
            ],
        );
        vectors(&out)
    };
    let (a, b) = (embed(&raw, "raw"), embed(&clean, "clean"));
    assert_eq!(a.len(), 3);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(
            x,
            y,
            "line {}: {:?} embeds unlike {:?}",
            i + 1,
            raw[i],
            clean[i]
        );
    }
}

/// The embedding vectors of an `embed` output, in row order.
fn vectors(path: &Path) -> Vec<Vec<f32>> {
    crate::train::embeddings(path)
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}
