//! What the golden and parity tests share: running a PyTorch reference
//! script of `python/model_ref/` through the project venv.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root: `MMCLIP_WORKSPACE`, or the one this test was built
/// in. A test binary carried to the GPU machine (no Rust toolchain there)
/// finds the reference scripts in that machine's copy of the tree.
pub fn workspace_root() -> PathBuf {
    let root = std::env::var_os("MMCLIP_WORKSPACE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    root.canonicalize()
        .unwrap_or_else(|e| panic!("workspace root {}: {e}", root.display()))
}

/// The Python that runs the references: `MMCLIP_PYTHON` (the GPU machine's
/// own `python3`, which holds torch and transformers), or the project venv's.
fn python(root: &Path) -> PathBuf {
    std::env::var_os("MMCLIP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"))
}

/// Runs `python/model_ref/{script} DIR ARGS…` with [`python`], or fails
/// saying what is missing.
pub fn run_reference(script: &str, dir: &Path, args: &[&str]) {
    let root = workspace_root();
    let python = python(&root);
    let out = Command::new(&python)
        .arg(root.join("python/model_ref").join(script))
        .arg(dir)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {}: {e}: the reference tests need the project venv with torch and transformers (run scripts/setup.sh), or MMCLIP_PYTHON",
                python.display()
            )
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "the venv lacks a module {script} needs (torch, transformers, safetensors, numpy: run scripts/setup.sh):\n{stderr}"
    );
    assert!(out.status.success(), "{script} {args:?} failed:\n{stderr}");
}
