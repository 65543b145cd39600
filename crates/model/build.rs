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
//! (the CUDA events of `src/transfer.rs`), `csrc/cast.cpp` (the grouped
//! weight casts of `src/cast.rs`), `csrc/dist.cpp` (the c10d
//! process group of `src/dist.rs`) and `csrc/graph.cpp` (the CUDA graphs of
//! `src/graph.rs`; see `compile_cuda_parts`). `train` runs this same
//! script for the link arguments
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

/// CUDA's runtime headers: `CUDA_HOME`, `/usr/local/cuda`, or the torch
/// wheel's `nvidia/cu13/include` once `nvidia-cuda-crt` and
/// `nvidia-cuda-cccl` from `python/requirements.txt` have added the `crt/`
/// and `nv/` folders it lacks. `include` is `site-packages/torch/include`.
fn cuda_headers(include: &std::path::Path) -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let site = include.parent().and_then(|torch| torch.parent());
    std::env::var_os("CUDA_HOME")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/usr/local/cuda")])
        .map(|d| d.join("include"))
        .chain(site.map(|s| s.join("nvidia/cu13/include")))
        .find(|d| {
            ["crt/host_config.h", "cuda_runtime_api.h", "nv/target"]
                .iter()
                .all(|f| d.join(f).is_file())
        })
}

/// A C++ build against libtorch's headers (the PyPI wheels of torch 2.x
/// are built with the C++11 ABI).
fn torch_build(include: &std::path::Path) -> cc::Build {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag_if_supported("-Wno-unused-parameter")
        // c10's CUDA headers align a pool to the cache line size, which GCC
        // warns may differ between compilers; libtorch fixes it at 64.
        .flag_if_supported("-Wno-interference-size");
    build
}

/// Compiles `csrc/dist.cpp` (the c10d process group of `src/dist.rs`) and
/// `csrc/graph.cpp` (the CUDA graphs of `src/graph.rs`).
///
/// ProcessGroupGloo.hpp includes gloo's headers, which the torch wheel does
/// not ship; `csrc/third_party/gloo` holds the ones it needs, from the gloo
/// commit the wheel was built with. The NCCL group and the CUDA graphs are
/// compiled in only when CUDA's headers ([`cuda_headers`]) and, for NCCL,
/// NCCL's (the wheel's `nvidia/nccl/include`, or `NCCL_HOME`) are found;
/// elsewhere they are refused at run time with that reason.
fn compile_cuda_parts(include: &std::path::Path) {
    println!("cargo:rerun-if-changed=csrc/dist.cpp");
    println!("cargo:rerun-if-changed=csrc/graph.cpp");
    println!("cargo:rerun-if-changed=csrc/third_party/gloo");
    println!("cargo:rerun-if-env-changed=NCCL_HOME");
    println!("cargo:rerun-if-env-changed=MMCLIP_BUILD_VERBOSE");
    let site = include.parent().and_then(|torch| torch.parent());
    let nccl = std::env::var_os("NCCL_HOME")
        .map(|d| PathBuf::from(d).join("include"))
        .into_iter()
        .chain(site.map(|s| s.join("nvidia/nccl/include")))
        .find(|d| d.join("nccl.h").is_file());
    let cuda = cuda_headers(include);
    let mut dist = torch_build(include);
    dist.include("csrc/third_party/gloo")
        .define("USE_C10D_GLOO", None)
        .file("csrc/dist.cpp");
    let mut graph = torch_build(include);
    graph.file("csrc/graph.cpp");
    if let Some(cuda) = &cuda {
        graph.include(cuda).define("MMCLIP_CUDA", None);
        // The CUDA stream and device functions are in libc10_cuda, which
        // tch does not link (CUDAGraph and ProcessGroupNCCL are in
        // libtorch_cuda, which it does).
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    match (nccl, &cuda) {
        (Some(nccl), Some(cuda)) => {
            dist.include(nccl)
                .include(cuda)
                .define("USE_C10D_NCCL", None)
                .define("MMCLIP_NCCL", None);
        }
        // Said only when asked: cargo replays a build script's warnings on
        // every build, and a CPU build has no use for them. They are
        // refused at run time with the reason.
        (nccl, cuda) if std::env::var_os("MMCLIP_BUILD_VERBOSE").is_some() => println!(
            "cargo:warning=model: the NCCL process group{} is not built ({}{}); \
             training on several GPUs needs it (set CUDA_HOME to a CUDA toolkit)",
            if cuda.is_none() {
                " and CUDA graphs"
            } else {
                ""
            },
            if nccl.is_none() { "no nccl.h " } else { "" },
            if cuda.is_none() {
                "no CUDA headers"
            } else {
                ""
            },
        ),
        _ => {}
    }
    dist.compile("mmclip_dist");
    graph.compile("mmclip_graph");
}

fn main() {
    if std::env::var("CARGO_PKG_NAME").as_deref() == Ok("model") {
        println!("cargo:rerun-if-changed=csrc/autocast.cpp");
        println!("cargo:rerun-if-changed=csrc/op_count.cpp");
        println!("cargo:rerun-if-changed=csrc/fused_optim.cpp");
        println!("cargo:rerun-if-changed=csrc/transfer.cpp");
        println!("cargo:rerun-if-changed=csrc/cast.cpp");
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
        torch_build(&include)
            .file("csrc/op_count.cpp")
            .file("csrc/fused_optim.cpp")
            .file("csrc/transfer.cpp")
            .file("csrc/cast.cpp")
            .compile("mmclip_aten_shim");
        compile_cuda_parts(&include);
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
