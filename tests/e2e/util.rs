//! Shared helpers: locating binaries and data, running commands, reading output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ingest::shard::{Row, read_shard};
use schemas::{MANIFEST_FILE, Manifest, REJECTS_FILE, Reject};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `../shared`, which CI always lays beside the checkout.
pub fn shared() -> PathBuf {
    let dir = workspace().join("../shared");
    assert!(
        dir.join("data").is_dir(),
        "{} is missing: the tests need the shared data",
        dir.display()
    );
    dir
}

/// A binary of the workspace, built in the same profile as this test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not built: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// The CLIP tokenizer built by `scripts/setup.sh`.
pub fn tokenizer() -> PathBuf {
    let path = workspace().join(".cache/clip/tokenizer.json");
    assert!(
        path.is_file(),
        "{} missing: run scripts/setup.sh",
        path.display()
    );
    path
}

/// Runs a binary and returns its output (whatever the exit status).
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("spawn")
}

/// Runs a binary and fails the test, with its stderr, unless it succeeds.
pub fn run_ok(name: &str, args: &[&str]) -> String {
    let out = run(name, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Generates a synthetic world into `dir` with extra `synth` arguments.
pub fn world(dir: &Path, extra: &[&str]) {
    let d = dir.to_str().expect("utf-8 path");
    let mut args = vec!["--out", d, "--size", "160"];
    args.extend_from_slice(extra);
    run_ok("synth", &args);
}

/// Runs `ingest mimic` with the project's tokenizer.
pub fn ingest_mimic(root: &Path, out: &Path, extra: &[&str]) -> Output {
    let tok = tokenizer();
    let mut args = vec![
        "mimic",
        "--root",
        root.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run("ingest", &args)
}

pub fn manifest(dir: &Path) -> Manifest {
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).expect("manifest.json");
    serde_json::from_str(&text).expect("valid manifest")
}

pub fn rejects(dir: &Path) -> Vec<Reject> {
    std::fs::read_to_string(dir.join(REJECTS_FILE))
        .expect("rejects.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("valid reject line"))
        .collect()
}

/// Every row of a shard folder, in shard order, checking each shard's sha256.
pub fn rows(dir: &Path) -> Vec<Row> {
    let m = manifest(dir);
    let mut all = Vec::new();
    for s in &m.shards {
        let path = dir.join(&s.file);
        assert_eq!(
            ingest::shard::sha256_file(&path).unwrap(),
            s.sha256,
            "{}",
            path.display()
        );
        let rows = read_shard(&path).expect("readable shard");
        assert_eq!(rows.len() as u64, s.rows, "{}", path.display());
        all.extend(rows);
    }
    all
}

/// Reads a gzipped CSV into header-keyed maps.
pub fn read_csv_gz(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(flate2::read::GzDecoder::new(file));
    let headers: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    r.records()
        .filter_map(Result::ok)
        .filter(|rec| rec.len() == headers.len())
        .map(|rec| {
            headers
                .iter()
                .cloned()
                .zip(rec.iter().map(str::to_string))
                .collect()
        })
        .collect()
}

/// Byte contents of every file in a folder (not recursive), by name.
pub fn folder_bytes(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}
