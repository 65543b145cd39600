//! What the golden and parity tests share: running a PyTorch reference
//! script of `python/model_ref/` through the project venv.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Runs `python/model_ref/{script} DIR ARGS…` with the venv's python, or
/// fails saying what is missing.
pub fn run_reference(script: &str, dir: &Path, args: &[&str]) {
    let root = workspace_root();
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} not found: the reference tests need the project venv with torch and transformers (run scripts/setup.sh)",
        python.display()
    );
    let out = Command::new(&python)
        .arg(root.join("python/model_ref").join(script))
        .arg(dir)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("running the venv's python");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "the venv lacks a module {script} needs (torch, transformers, safetensors, numpy: run scripts/setup.sh):\n{stderr}"
    );
    assert!(out.status.success(), "{script} {args:?} failed:\n{stderr}");
}
