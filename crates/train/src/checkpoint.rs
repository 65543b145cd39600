//! Checkpoints: `RUN/checkpoints/step-NNNNNNNN/` with the model weights
//! (`model.safetensors`, the MMCLIP `VarStore` by name), the optimiser
//! state (`optimizer.safetensors`) and `state.json` (step, loader position,
//! seeds, counters). A checkpoint is written into a `.partial` folder and
//! renamed into place, so a killed run never leaves a half checkpoint
//! that looks whole; the oldest beyond `keep_last` are removed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use pipeline::Position;
use serde::{Deserialize, Serialize};
use tch::{Tensor, nn::VarStore};

use crate::data::ShardRecord;
use crate::optim::Optimizer;

/// Weights file inside a checkpoint folder.
pub const MODEL_FILE: &str = "model.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "state.json";

/// Everything besides tensors that a resumed run needs to continue as an
/// uninterrupted one would have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps done; the next step is this one.
    pub step: u64,
    /// The loader position of the next batch.
    pub next_position: Position,
    /// Optimiser steps taken (differs from `step` by skipped steps).
    pub optimizer_steps: u64,
    /// The run's seed (masks of step s come from `step_seed(seed, s)`).
    pub seed: u64,
    /// Steps skipped for a non-finite loss or gradient, in all.
    pub skipped_steps: u64,
    /// Non-finite steps in a row at the end.
    pub nonfinite_in_a_row: u64,
    /// sha256 of the config the run was started with.
    pub config_sha256: String,
    /// The shard folders the weights were trained on, in the loader's
    /// order (empty in checkpoints written before they were recorded).
    #[serde(default)]
    pub shards: Vec<ShardRecord>,
}

/// The checkpoint folder of `step`.
pub fn dir_of(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:08}"))
}

/// Writes a checkpoint atomically and prunes old ones.
pub fn save(
    run: &Path,
    vs: &VarStore,
    opt: &Optimizer,
    state: &TrainState,
    keep_last: usize,
) -> Result<PathBuf> {
    let dir = dir_of(run, state.step);
    let partial = dir.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("removing {}", partial.display()))?;
    }
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    vs.save(partial.join(MODEL_FILE))
        .with_context(|| format!("writing {}", partial.join(MODEL_FILE).display()))?;
    let (tensors, optimizer_steps) = opt.state();
    debug_assert_eq!(optimizer_steps, state.optimizer_steps);
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    Tensor::write_safetensors(&named, partial.join(OPTIMIZER_FILE))
        .with_context(|| format!("writing {}", partial.join(OPTIMIZER_FILE).display()))?;
    std::fs::write(partial.join(STATE_FILE), serde_json::to_vec_pretty(state)?)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&partial, &dir)
        .with_context(|| format!("moving {} into place", dir.display()))?;
    prune(run, keep_last)?;
    Ok(dir)
}

/// Complete checkpoints of a run, oldest first.
pub fn list(run: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let root = run.join("checkpoints");
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&root).with_context(|| format!("reading {}", root.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
            && path.join(STATE_FILE).exists()
        {
            out.push((step, path));
        }
    }
    out.sort();
    Ok(out)
}

fn prune(run: &Path, keep_last: usize) -> Result<()> {
    let all = list(run)?;
    for (_, path) in all.iter().take(all.len().saturating_sub(keep_last.max(1))) {
        std::fs::remove_dir_all(path)
            .with_context(|| format!("removing old checkpoint {}", path.display()))?;
    }
    Ok(())
}

/// Reads a checkpoint's state.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join(STATE_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a checkpoint state", path.display()))
}

/// Loads a checkpoint's weights and optimiser state; returns its state.
pub fn load(dir: &Path, vs: &mut VarStore, opt: &mut Optimizer) -> Result<TrainState> {
    let state = read_state(dir)?;
    load_weights(dir, vs)?;
    let file = dir.join(OPTIMIZER_FILE);
    let tensors =
        Tensor::read_safetensors(&file).with_context(|| format!("reading {}", file.display()))?;
    // State is named `{kind}.{variable}`: fused where the variable is.
    let vars = vs.variables();
    let tensors = model::load::fuse_qkv(tensors, |name| {
        name.split_once('.')
            .is_some_and(|(_, var)| vars.contains_key(var))
    })
    .map_err(|name| anyhow::anyhow!("{}: no optimizer state {name}", file.display()))?;
    opt.load_state(tensors, state.optimizer_steps)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    Ok(state)
}

/// Loads a checkpoint's weights (or a bare `model.safetensors`) into `vs`.
pub fn load_weights(path: &Path, vs: &mut VarStore) -> Result<()> {
    let file = if path.is_dir() {
        path.join(MODEL_FILE)
    } else {
        path.to_owned()
    };
    if !file.exists() {
        bail!("{}: no {MODEL_FILE} here", path.display());
    }
    let loaded = vs.load(&file);
    let is_safetensors = file.extension().is_some_and(|e| e == "safetensors");
    match loaded {
        Err(e) if is_safetensors => load_unfused(&file, vs).map_err(|legacy| {
            legacy.context(format!("loading weights from {}: {e}", file.display()))
        }),
        r => r.with_context(|| format!("loading weights from {}", file.display())),
    }
}

/// Loads weights written before self-attention fused its q/k/v projections
/// (separate `q_proj`, `k_proj`, `v_proj` where the model now has one
/// `qkv_proj`): stacks them, then sets every variable by name. Tensors the
/// model has no variable for are ignored, as `VarStore::load` does.
fn load_unfused(file: &Path, vs: &VarStore) -> Result<()> {
    let tensors =
        Tensor::read_safetensors(file).with_context(|| format!("reading {}", file.display()))?;
    let mut vars = vs.variables();
    let tensors = model::load::fuse_qkv(tensors, |name| vars.contains_key(name))
        .map_err(|name| anyhow::anyhow!("{}: no tensor {name}", file.display()))?;
    let mut tensors: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    let mut names: Vec<String> = vars.keys().cloned().collect();
    names.sort();
    let _guard = tch::no_grad_guard();
    for name in names {
        let var = vars.get_mut(&name).expect("listed");
        let Some(src) = tensors.remove(&name) else {
            bail!("{}: no tensor for model variable {name}", file.display());
        };
        if src.size() != var.size() {
            bail!(
                "{}: {name} has shape {:?}, the model expects {:?}",
                file.display(),
                src.size(),
                var.size()
            );
        }
        var.f_copy_(&src.to_kind(var.kind()).to_device(var.device()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OptimConfig;
    use model::attention::Attention;
    use tch::{Device, Kind};

    fn attention_store() -> VarStore {
        let vs = VarStore::new(Device::Cpu);
        let _attn = Attention::new(vs.root() / "layer" / "self_attn", 8, 2);
        let _cross = Attention::cross(vs.root() / "layer" / "cross_attn", 8, 4, 2);
        vs
    }

    /// Rewrites `file` with the fused tensors split into HF's q/k/v names:
    /// what the same model wrote before the fusion.
    fn unfuse(file: &Path) {
        let tensors = Tensor::read_safetensors(file).unwrap();
        Tensor::write_safetensors(&model::load::split_qkv(tensors), file).unwrap();
    }

    #[test]
    fn a_checkpoint_with_separate_q_k_v_loads_into_the_fused_model() {
        let run = tempfile::tempdir().unwrap();
        let vs = attention_store();
        let cfg = OptimConfig::default();
        let mut opt = Optimizer::new(&vs, &cfg);
        let squares: Vec<Tensor> = vs
            .trainable_variables()
            .iter()
            .map(|v| v.square().sum(Kind::Float))
            .collect();
        Tensor::stack(&squares, 0).sum(Kind::Float).backward();
        opt.step(0.1);
        let state = TrainState {
            step: 3,
            next_position: Position::default(),
            optimizer_steps: 1,
            seed: 0,
            skipped_steps: 0,
            nonfinite_in_a_row: 0,
            config_sha256: String::new(),
            shards: Vec::new(),
        };
        let dir = save(run.path(), &vs, &opt, &state, 1).unwrap();
        unfuse(&dir.join(MODEL_FILE));
        unfuse(&dir.join(OPTIMIZER_FILE));
        let names = Tensor::read_safetensors(dir.join(OPTIMIZER_FILE)).unwrap();
        assert!(
            names
                .iter()
                .any(|(n, _)| n.ends_with("self_attn.k_proj.weight"))
        );

        let mut fresh = attention_store();
        let mut fresh_opt = Optimizer::new(&fresh, &cfg);
        assert_eq!(load(&dir, &mut fresh, &mut fresh_opt).unwrap(), state);
        let want = vs.variables();
        for (name, t) in fresh.variables() {
            assert!(t.equal(&want[&name]), "{name} not loaded");
        }
        let (got_state, _) = fresh_opt.state();
        let want_state: std::collections::HashMap<String, Tensor> =
            opt.state().0.into_iter().collect();
        assert_eq!(got_state.len(), want_state.len());
        for (name, t) in got_state {
            assert!(t.equal(&want_state[&name]), "{name} not restored");
        }

        // Without one of the three parts the error names the file and it.
        let file = dir.join(MODEL_FILE);
        let partial: Vec<(String, Tensor)> = Tensor::read_safetensors(&file)
            .unwrap()
            .into_iter()
            .filter(|(n, _)| !n.ends_with("self_attn.v_proj.bias"))
            .collect();
        Tensor::write_safetensors(&partial, &file).unwrap();
        let err = format!("{:#}", load_weights(&dir, &mut fresh).unwrap_err());
        assert!(
            err.contains(&file.display().to_string())
                && err.contains("layer.self_attn.v_proj.bias"),
            "{err}"
        );
    }
}
