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
//! (the fused optimiser updates of `src/fused.rs`), `csrc/transfer.cpp`
//! (the CUDA events of `src/transfer.rs`), and `csrc/dist.cpp`
//! (the c10d process group of `src/dist.rs`; see `compile_dist`). `train` runs this same script for the link arguments
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

/// Compiles `csrc/dist.cpp` (the c10d process group of `src/dist.rs`).
///
/// ProcessGroupGloo.hpp includes gloo's headers, which the torch wheel does
/// not ship; `csrc/third_party/gloo` holds the ones it needs, from the gloo
/// commit the wheel was built with. The NCCL group is compiled in only when
/// NCCL's header (the wheel's `nvidia/nccl/include`, or `NCCL_HOME`) and
/// CUDA's runtime headers (`CUDA_HOME`, `/usr/local/cuda`, or the wheel's
/// `nvidia/cu13/include` once `nvidia-cuda-crt` and `nvidia-cuda-cccl`
/// from `python/requirements.txt` have added `crt/` and `nv/`) are both
/// found;
/// elsewhere a CUDA group is refused at run time with that reason.
fn compile_dist(include: &std::path::Path) {
    println!("cargo:rerun-if-changed=csrc/dist.cpp");
    println!("cargo:rerun-if-changed=csrc/third_party/gloo");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=NCCL_HOME");
    println!("cargo:rerun-if-env-changed=MMCLIP_BUILD_VERBOSE");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .include("csrc/third_party/gloo")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .flag_if_supported("-Wno-unused-parameter")
        // c10's CUDA headers align a pool to the cache line size, which GCC
        // warns may differ between compilers; libtorch fixes it at 64.
        .flag_if_supported("-Wno-interference-size")
        .file("csrc/dist.cpp");
    // include = site-packages/torch/include.
    let site = include.parent().and_then(|torch| torch.parent());
    let nccl = std::env::var_os("NCCL_HOME")
        .map(|d| PathBuf::from(d).join("include"))
        .into_iter()
        .chain(site.map(|s| s.join("nvidia/nccl/include")))
        .find(|d| d.join("nccl.h").is_file());
    let cuda = std::env::var_os("CUDA_HOME")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/usr/local/cuda")])
        .map(|d| d.join("include"))
        .chain(site.map(|s| s.join("nvidia/cu13/include")))
        .find(|d| d.join("crt/host_config.h").is_file() && d.join("cuda_runtime_api.h").is_file());
    match (nccl, cuda) {
        (Some(nccl), Some(cuda)) => {
            build
                .include(nccl)
                .include(cuda)
                .define("USE_C10D_NCCL", None)
                .define("MMCLIP_NCCL", None);
            // ProcessGroupNCCL is in libtorch_cuda (which tch links), the
            // CUDA device functions in libc10_cuda (which it does not).
            println!("cargo:rustc-link-lib=dylib=c10_cuda");
        }
        // Said only when asked: cargo replays a build script's warnings on
        // every build, and a CPU build has no use for NCCL. A CUDA group is
        // refused at run time with the reason, and `nccl_available` tells.
        (nccl, cuda) if std::env::var_os("MMCLIP_BUILD_VERBOSE").is_some() => println!(
            "cargo:warning=model: the NCCL process group is not built ({}{}); \
             training on several GPUs needs it (set CUDA_HOME to a CUDA toolkit)",
            if nccl.is_none() { "no nccl.h " } else { "" },
            if cuda.is_none() {
                "no CUDA toolkit headers"
            } else {
                ""
            },
        ),
        _ => {}
    }
    build.compile("mmclip_dist");
}

fn main() {
    if std::env::var("CARGO_PKG_NAME").as_deref() == Ok("model") {
        println!("cargo:rerun-if-changed=csrc/autocast.cpp");
        println!("cargo:rerun-if-changed=csrc/op_count.cpp");
        println!("cargo:rerun-if-changed=csrc/fused_optim.cpp");
        println!("cargo:rerun-if-changed=csrc/transfer.cpp");
        println!("cargo:rerun-if-changed=csrc/shim.h");
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
            .file("csrc/transfer.cpp")
            .compile("mmclip_aten_shim");
        compile_dist(&include);
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
