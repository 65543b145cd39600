//! The training step's operator count, the CPU-measurable proxy for its GPU
//! kernel launches (a launch-bound step is one with too many small
//! operators): `step_bench --count-ops` on the tiny preset, held to the
//! counts below. A change that adds operators to the step fails here; one
//! that removes many must lower the ceilings, so the next regression is
//! caught from the new level.

use std::path::PathBuf;
use std::process::Command;

/// ATen operators of one joint step of the tiny preset (batch 4, 3 paired),
/// as counted on the CPU, with the plain update and with the fused one
/// (`[optim] fused`); the count depends neither on the batch size nor on
/// the thread count. "update" is what `train` runs besides forward and
/// backward: zeroing the gradients, the gradient norm, the finiteness
/// decision and clipping on the device, the update, and the weights' check.
/// The fused update is one operator and its decision a few dozen, where
/// the plain update and per-tensor norms and checks cost several per
/// parameter tensor. Self-attention projects q, k and v with one matmul
/// (`qkv_proj`); three projections would cost 276 forward, 694 backward and
/// 336 plain-update operators more (4 parameter tensors per attention layer).
///
/// `zero_grad` drops the gradients (PyTorch's `set_to_none`), so the
/// backward pass stores each parameter's first gradient (an `aten::detach`
/// view, counted twice by the profiler's records, no kernel) instead of
/// adding it to zeros (an `aten::add_` kernel). A matrix product, sum or
/// mean counts as the one operator it is on CUDA, not with the helpers
/// its CPU implementation dispatches. The count includes views, which
/// launch nothing.
const CEILING: [(&str, u64); 3] = [("forward", 1875), ("backward", 2899), ("update", 1578)];
const CEILING_FUSED: [(&str, u64); 3] = [("forward", 1875), ("backward", 2899), ("update", 63)];

/// Of those, the kernels (`kernels_per_step`: no views, allocations or
/// composites; see `model::op_count`): about one operator in six. The
/// fused update is 29 kernels where the plain one launches 462.
const KERNELS: [(&str, u64); 3] = [("forward", 326), ("backward", 450), ("update", 462)];
const KERNELS_FUSED: [(&str, u64); 3] = [("forward", 326), ("backward", 450), ("update", 29)];

/// The fused step under bfloat16 autocast (`--autocast bf16`), with the
/// weights cast to bfloat16 a group at a time once per step (`model::cast`):
/// autocast's own cast of each weight, and of each gradient back, would
/// cost 64 kernels more forward and 64 backward (194 and 258 operators).
/// The rest of what autocast adds is its casts of activations.
const CEILING_BF16: [(&str, u64); 3] = [("forward", 2347), ("backward", 3231), ("update", 63)];
const KERNELS_BF16: [(&str, u64); 3] = [("forward", 381), ("backward", 508), ("update", 29)];

/// Operators per step that make the host wait for a CUDA device (`item`,
/// `nonzero`, …): none with the fused update, so the host can queue the
/// next step while the device runs this one; the plain update, the
/// reference, reads its skip flag and step count.
const SYNCS: u64 = 2;
const SYNCS_FUSED: u64 = 0;

/// A count this far below its ceiling means the ceiling is stale.
const STALE_BELOW: f64 = 0.95;

fn step_bench() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let debug = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = debug.join("examples/step_bench");
    assert!(
        path.is_file(),
        "{} not built: `cargo test` builds the examples (or `cargo build -p train --examples`)",
        path.display()
    );
    path
}

#[test]
fn the_training_step_dispatches_no_more_operators_than_recorded() {
    check(&[], [&CEILING, &KERNELS], SYNCS);
}

#[test]
fn the_fused_step_updates_in_a_few_dozen_operators_and_never_waits_for_the_device() {
    check(&["--fused"], [&CEILING_FUSED, &KERNELS_FUSED], SYNCS_FUSED);
}

#[test]
fn the_bfloat16_step_casts_its_weights_a_group_at_a_time() {
    check(
        &["--fused", "--autocast", "bf16"],
        [&CEILING_BF16, &KERNELS_BF16],
        SYNCS_FUSED,
    );
}

/// Runs `step_bench --count-ops` and holds its operator and kernel counts
/// to `[operators, kernels]` and its host waits to `syncs`.
fn check(extra: &[&str], [ceilings, kernels]: [&[(&str, u64)]; 2], syncs: u64) {
    let out = Command::new(step_bench())
        .args([
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--batch",
            "4",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--count-ops",
        ])
        .args(extra)
        .output()
        .expect("running step_bench");
    assert!(
        out.status.success(),
        "step_bench failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("one JSON line")).expect("JSON");
    let mut problems = Vec::new();
    for (field, what, ceilings) in [
        ("aten_ops_per_step", "operators", ceilings),
        ("kernels_per_step", "kernels", kernels),
    ] {
        let counts = &line[field];
        for &(phase, ceiling) in ceilings {
            let count = counts[phase]
                .as_u64()
                .unwrap_or_else(|| panic!("no {phase} count in {line}"));
            if count > ceiling {
                problems.push(format!(
                    "{phase}: {count} {what}, more than the {ceiling} recorded"
                ));
            } else if (count as f64) < STALE_BELOW * ceiling as f64 {
                problems.push(format!(
                    "{phase}: {count} {what}, well below the {ceiling} recorded: lower the ceiling to {count}"
                ));
            }
        }
        let phases: u64 = ceilings
            .iter()
            .map(|(p, _)| counts[p].as_u64().unwrap_or(0))
            .sum();
        if counts["total"].as_u64() != Some(phases) {
            problems.push(format!("{field}: the total is not the sum of the phases"));
        }
    }
    let waits = line["host_syncs_per_step"]["total"].as_u64();
    if waits != Some(syncs) {
        problems.push(format!(
            "host synchronisations per step: {waits:?}, {syncs} expected ({})",
            line["host_syncs_per_step"]
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
