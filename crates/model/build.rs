//! Keeps `libtorch_cuda` linked into every binary of this crate.
//!
//! Nothing in the Rust code references a symbol of `libtorch_cuda`, so with
//! the default `--as-needed` the linker drops it and libtorch then reports
//! CUDA as unavailable on a GPU machine. Linking it with `--no-as-needed`
//! keeps it; on a CPU-only libtorch (no `libtorch_cuda.so`) nothing is added.
//!
//! It also records the build's libtorch folder as the binaries' run path, so
//! `cargo test` runs without `LD_LIBRARY_PATH`. A binary carried to another
//! machine finds that machine's libtorch through `LD_LIBRARY_PATH`, which
//! the loader searches before the run path.
//!
//! For the `model` crate itself it compiles `csrc/autocast.cpp`, the
//! per-device autocast switches that `tch` does not bind (see
//! `src/autocast.rs`), and against libtorch's headers `csrc/op_count.cpp`
//! (the operator counter of `src/op_count.rs`) and `csrc/fused_optim.cpp`
//! (the fused optimiser updates of `src/fused.rs`). `train` runs this same script for the link arguments
//! (they do not pass from a library to its dependents' binaries) and must
//! not compile the shim a second time.

use std::path::PathBuf;

fn torch_lib_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("LIBTORCH") {
        return Some(PathBuf::from(dir).join("lib"));
    }
    if std::env::var("LIBTORCH_USE_PYTORCH").is_ok() {
        let out = std::process::Command::new("python")
            .args([
                "-c",
                "import torch, os; print(os.path.dirname(torch.__file__))",
            ])
            .output()
            .ok()?;
        let dir = String::from_utf8(out.stdout).ok()?;
        return Some(PathBuf::from(dir.trim()).join("lib"));
    }
    None
}

fn main() {
    if std::env::var("CARGO_PKG_NAME").as_deref() == Ok("model") {
        println!("cargo:rerun-if-changed=csrc/autocast.cpp");
        println!("cargo:rerun-if-changed=csrc/op_count.cpp");
        println!("cargo:rerun-if-changed=csrc/fused_optim.cpp");
        cc::Build::new()
            .cpp(true)
            .std("c++17")
            .file("csrc/autocast.cpp")
            .compile("mmclip_autocast");
        let include = torch_lib_dir()
            .and_then(|lib| Some(lib.parent()?.join("include")))
            .filter(|dir| dir.join("ATen/record_function.h").is_file())
            .expect(
                "libtorch's headers not found: set LIBTORCH or LIBTORCH_USE_PYTORCH=1 \
                 (`source scripts/env.sh` does)",
            );
        cc::Build::new()
            .cpp(true)
            .std("c++17")
            .include(&include)
            .include(include.join("torch/csrc/api/include"))
            // The PyPI wheels of torch 2.x are built with the C++11 ABI.
            .define("_GLIBCXX_USE_CXX11_ABI", "1")
            .flag_if_supported("-Wno-unused-parameter")
            .file("csrc/op_count.cpp")
            .file("csrc/fused_optim.cpp")
            .compile("mmclip_aten_shim");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    let Some(dir) = torch_lib_dir() else { return };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    if dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
