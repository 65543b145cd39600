//! Loading pretrained weights into a [`Clip`](crate::Clip)'s `VarStore`.
//!
//! The model's variable paths are the Hugging Face `CLIPModel` names, so a HF
//! safetensors file (`openai/clip-vit-base-patch16` layout) loads by name.
//! OpenAI / open_clip files (`visual.conv1.weight`, fused `in_proj_weight`,
//! `[D, C]` projections) are first renamed to HF names by [`openai_to_hf`].
//!
//! The one difference from HF's names: a self-attention layer holds its
//! q/k/v projections as one `qkv_proj` ([`crate::attention::Attention`]).
//! [`fuse_qkv`] stacks HF's `q_proj`, `k_proj`, `v_proj` into it on import
//! (and maps checkpoints written before the fusion); [`split_qkv`] splits it
//! back on export, so exported folders are plain HF `CLIPModel` files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Tensor, nn};

/// Why a weight file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// libtorch could not read the file.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// libtorch's error.
        source: tch::TchError,
    },
    /// A model variable has no tensor in the file.
    #[error("{path}: no tensor for model variable {name}")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The HF variable name.
        name: String,
    },
    /// The file holds a tensor the model has no variable for.
    #[error("{path}: tensor {name} matches no model variable")]
    Unexpected {
        /// The file.
        path: PathBuf,
        /// The (HF-renamed) tensor name.
        name: String,
    },
    /// A tensor's shape differs from the variable's.
    #[error("{path}: {name} has shape {found:?}, the model expects {expected:?}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The HF variable name.
        name: String,
        /// The variable's shape.
        expected: Vec<i64>,
        /// The file's shape.
        found: Vec<i64>,
    },
    /// An OpenAI-named tensor has no HF counterpart.
    #[error("{path}: cannot map OpenAI/open_clip tensor {name} to a Hugging Face name")]
    Unmapped {
        /// The file.
        path: PathBuf,
        /// The OpenAI name.
        name: String,
    },
}

/// Buffers some checkpoints carry that are not parameters: HF's
/// `position_ids`, open_clip's causal `attn_mask`.
fn is_buffer(name: &str) -> bool {
    name.ends_with("position_ids") || name == "attn_mask"
}

/// Loads a `CLIPModel` safetensors file, HF or OpenAI/open_clip naming
/// (detected from the names), into `vs`. Every variable must be set and
/// every tensor used; values are converted to each variable's kind and device.
pub fn load_clip_safetensors(vs: &nn::VarStore, path: impl AsRef<Path>) -> Result<(), LoadError> {
    load_clip_safetensors_at(vs, "", path)
}

/// As [`load_clip_safetensors`], into the variables below `prefix` (e.g.
/// `"clip."` in an [`crate::Mmclip`]'s `VarStore`); other variables are
/// left alone.
pub fn load_clip_safetensors_at(
    vs: &nn::VarStore,
    prefix: &str,
    path: impl AsRef<Path>,
) -> Result<(), LoadError> {
    let path = path.as_ref();
    let tensors = Tensor::read_safetensors(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let tensors = if tensors.iter().any(|(n, _)| n.starts_with("visual.")) {
        openai_to_hf(tensors).map_err(|name| LoadError::Unmapped {
            path: path.to_path_buf(),
            name,
        })?
    } else {
        tensors
    };
    let vars: HashMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .filter_map(|(name, t)| Some((name.strip_prefix(prefix)?.to_string(), t)))
        .collect();
    let tensors =
        fuse_qkv(tensors, |name| vars.contains_key(name)).map_err(|name| LoadError::Missing {
            path: path.to_path_buf(),
            name,
        })?;
    copy_named(vars, tensors, path)
}

/// The three HF projections a fused `…qkv_proj.{weight,bias}` stacks, in
/// row order.
const QKV_PARTS: [&str; 3] = ["q_proj", "k_proj", "v_proj"];

/// `(prefix, suffix)` of a name `{prefix}.{part}.{suffix}` with `part` one
/// of `parts` (the last such segment), e.g. `("a.self_attn", "q_proj",
/// "weight")`.
fn split_part<'a>(name: &'a str, parts: &[&str]) -> Option<(&'a str, &'a str, &'a str)> {
    let (head, suffix) = name.rsplit_once('.')?;
    let (prefix, part) = head.rsplit_once('.')?;
    parts.contains(&part).then_some((prefix, part, suffix))
}

/// Stacks HF's separate `{p}.q_proj.{s}`, `{p}.k_proj.{s}`, `{p}.v_proj.{s}`
/// into `{p}.qkv_proj.{s}` (rows q, k, v) wherever `is_fused` accepts that
/// fused name; other tensors pass unchanged, in their order. Names may
/// carry any prefix, so optimiser state (`exp_avg.{variable}`) maps as
/// weights do. Returns the name of a part that is missing when its
/// siblings are present.
pub fn fuse_qkv(
    tensors: Vec<(String, Tensor)>,
    is_fused: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Tensor)>, String> {
    let fused_name = |name: &str| {
        let (prefix, _, suffix) = split_part(name, &QKV_PARTS)?;
        let fused = format!("{prefix}.{}.{suffix}", crate::attention::QKV_PROJ);
        is_fused(&fused).then_some((fused, prefix.to_string(), suffix.to_string()))
    };
    let mut out = Vec::with_capacity(tensors.len());
    // Fused name → its parts found so far, by position in QKV_PARTS.
    let mut pending: HashMap<String, (String, String, [Option<Tensor>; 3])> = HashMap::new();
    let mut order = Vec::new();
    for (name, t) in tensors {
        match fused_name(&name) {
            Some((fused, prefix, suffix)) => {
                let (_, part, _) = split_part(&name, &QKV_PARTS).expect("matched above");
                let i = QKV_PARTS.iter().position(|p| *p == part).expect("a part");
                let entry = pending.entry(fused.clone()).or_insert_with(|| {
                    order.push(fused);
                    (prefix, suffix, [None, None, None])
                });
                entry.2[i] = Some(t);
            }
            None => out.push((name, t)),
        }
    }
    for fused in order {
        let (prefix, suffix, parts) = pending.remove(&fused).expect("recorded");
        let mut found = Vec::with_capacity(3);
        for (part, t) in QKV_PARTS.iter().zip(parts) {
            found.push(t.ok_or_else(|| format!("{prefix}.{part}.{suffix}"))?);
        }
        out.push((fused, Tensor::cat(&found, 0)));
    }
    Ok(out)
}

/// Splits every `{p}.qkv_proj.{s}` into HF's `{p}.q_proj.{s}`,
/// `{p}.k_proj.{s}`, `{p}.v_proj.{s}` (the inverse of [`fuse_qkv`]); other
/// tensors pass unchanged. The parts are contiguous copies.
pub fn split_qkv(tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    let mut out = Vec::with_capacity(tensors.len() + 8);
    for (name, t) in tensors {
        match split_part(&name, &[crate::attention::QKV_PROJ]) {
            Some((prefix, _, suffix)) => {
                for (part, chunk) in QKV_PARTS.iter().zip(t.chunk(3, 0)) {
                    out.push((format!("{prefix}.{part}.{suffix}"), chunk.contiguous()));
                }
            }
            None => out.push((name, t)),
        }
    }
    out
}

/// Copies named tensors into the variables of the same name.
fn copy_named(
    mut vars: HashMap<String, Tensor>,
    tensors: Vec<(String, Tensor)>,
    path: &Path,
) -> Result<(), LoadError> {
    let err_path = || path.to_path_buf();
    let _guard = tch::no_grad_guard();
    for (name, src) in tensors {
        if is_buffer(&name) {
            continue;
        }
        let Some(mut var) = vars.remove(&name) else {
            return Err(LoadError::Unexpected {
                path: err_path(),
                name,
            });
        };
        if var.size() != src.size() {
            return Err(LoadError::Shape {
                path: err_path(),
                name,
                expected: var.size(),
                found: src.size(),
            });
        }
        var.copy_(&src.to_kind(var.kind()).to_device(var.device()));
    }
    match vars.into_keys().min() {
        Some(name) => Err(LoadError::Missing {
            path: err_path(),
            name,
        }),
        None => Ok(()),
    }
}

/// Renames OpenAI / open_clip CLIP tensors to HF `CLIPModel` names: splits
/// fused `in_proj_{weight,bias}` into q/k/v and transposes the `[D, C]`
/// projections into `[C, D]` linear weights. Returns the first name it
/// cannot map.
pub fn openai_to_hf(tensors: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, String> {
    let mut out = Vec::with_capacity(tensors.len() + 64);
    for (name, t) in tensors {
        if is_buffer(&name) {
            continue;
        }
        let (tower, rest) = match name.strip_prefix("visual.") {
            Some(rest) => ("vision_model", rest),
            None => ("text_model", name.as_str()),
        };
        let fixed: HashMap<&str, &str> = if tower == "vision_model" {
            HashMap::from([
                (
                    "conv1.weight",
                    "vision_model.embeddings.patch_embedding.weight",
                ),
                ("class_embedding", "vision_model.embeddings.class_embedding"),
                (
                    "positional_embedding",
                    "vision_model.embeddings.position_embedding.weight",
                ),
                ("ln_pre.weight", "vision_model.pre_layrnorm.weight"),
                ("ln_pre.bias", "vision_model.pre_layrnorm.bias"),
                ("ln_post.weight", "vision_model.post_layernorm.weight"),
                ("ln_post.bias", "vision_model.post_layernorm.bias"),
            ])
        } else {
            HashMap::from([
                (
                    "token_embedding.weight",
                    "text_model.embeddings.token_embedding.weight",
                ),
                (
                    "positional_embedding",
                    "text_model.embeddings.position_embedding.weight",
                ),
                ("ln_final.weight", "text_model.final_layer_norm.weight"),
                ("ln_final.bias", "text_model.final_layer_norm.bias"),
                ("logit_scale", "logit_scale"),
            ])
        };
        if let Some(hf) = fixed.get(rest) {
            out.push((hf.to_string(), t));
        } else if rest == "proj" && tower == "vision_model" {
            out.push(("visual_projection.weight".into(), t.tr().contiguous()));
        } else if rest == "text_projection" {
            out.push(("text_projection.weight".into(), t.tr().contiguous()));
        } else if let Some(block) = rest.strip_prefix("transformer.resblocks.") {
            let (i, field) = block.split_once('.').ok_or_else(|| name.clone())?;
            let layer = format!("{tower}.encoder.layers.{i}");
            let simple = match field {
                "ln_1.weight" => Some("layer_norm1.weight"),
                "ln_1.bias" => Some("layer_norm1.bias"),
                "ln_2.weight" => Some("layer_norm2.weight"),
                "ln_2.bias" => Some("layer_norm2.bias"),
                "attn.out_proj.weight" => Some("self_attn.out_proj.weight"),
                "attn.out_proj.bias" => Some("self_attn.out_proj.bias"),
                "mlp.c_fc.weight" => Some("mlp.fc1.weight"),
                "mlp.c_fc.bias" => Some("mlp.fc1.bias"),
                "mlp.c_proj.weight" => Some("mlp.fc2.weight"),
                "mlp.c_proj.bias" => Some("mlp.fc2.bias"),
                _ => None,
            };
            if let Some(hf) = simple {
                out.push((format!("{layer}.{hf}"), t));
            } else if let Some(kind) = field.strip_prefix("attn.in_proj_") {
                // [3D, ..] stacked as q, k, v (torch.nn.MultiheadAttention).
                let parts = t.chunk(3, 0);
                for (proj, part) in ["q_proj", "k_proj", "v_proj"].iter().zip(parts) {
                    out.push((
                        format!("{layer}.self_attn.{proj}.{kind}"),
                        part.contiguous(),
                    ));
                }
            } else {
                return Err(name);
            }
        } else {
            return Err(name);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Clip, ClipConfig};
    use tch::{Device, Kind};

    fn named(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn split_then_fuse_is_the_identity() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _clip = Clip::new(vs.root(), &ClipConfig::tiny());
        let vars = vs.variables();
        let hf = split_qkv(named(&vs));
        let layer = "text_model.encoder.layers.1.self_attn";
        let names: Vec<&str> = hf.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&format!("{layer}.k_proj.bias").as_str()));
        assert!(!names.iter().any(|n| n.contains("qkv_proj")));
        // The k rows are the middle third.
        let k = &hf
            .iter()
            .find(|(n, _)| *n == format!("{layer}.k_proj.weight"))
            .unwrap()
            .1;
        let d = k.size()[0];
        assert!(k.equal(&vars[&format!("{layer}.qkv_proj.weight")].narrow(0, d, d)));
        let fused = fuse_qkv(hf, |n| vars.contains_key(n)).unwrap();
        assert_eq!(fused.len(), vars.len());
        for (name, t) in fused {
            assert!(t.equal(&vars[&name]), "{name} changed");
        }
    }

    #[test]
    fn fusing_names_a_missing_part_and_leaves_unfused_layers_alone() {
        let f = (Kind::Float, Device::Cpu);
        let t = |n: &str| (n.to_string(), Tensor::zeros([2, 2], f));
        let fused = |n: &str| n == "a.qkv_proj.weight";
        let err = fuse_qkv(vec![t("a.q_proj.weight"), t("a.v_proj.weight")], fused).unwrap_err();
        assert_eq!(err, "a.k_proj.weight");
        // Cross-attention keeps its separate layers.
        let out = fuse_qkv(vec![t("b.q_proj.weight"), t("b.k_proj.weight")], fused).unwrap();
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_hugging_face_file_loads_into_the_fused_variables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let _clip = Clip::new(vs.root(), &ClipConfig::tiny());
        Tensor::write_safetensors(&split_qkv(named(&vs)), &path).unwrap();
        tch::manual_seed(2);
        let fresh = nn::VarStore::new(Device::Cpu);
        let _clip = Clip::new(fresh.root(), &ClipConfig::tiny());
        load_clip_safetensors(&fresh, &path).unwrap();
        let want = vs.variables();
        for (name, t) in fresh.variables() {
            assert!(t.equal(&want[&name]), "{name} not loaded");
        }
        // A file without one of the three names the missing one.
        let partial: Vec<(String, Tensor)> = split_qkv(named(&vs))
            .into_iter()
            .filter(|(n, _)| n != "vision_model.encoder.layers.0.self_attn.v_proj.bias")
            .collect();
        Tensor::write_safetensors(&partial, &path).unwrap();
        let err = load_clip_safetensors(&fresh, &path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("layers.0.self_attn.v_proj.bias"),
            "{err}"
        );
    }
}
