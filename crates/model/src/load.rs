//! Loading pretrained weights into a [`Clip`](crate::Clip)'s `VarStore`.
//!
//! The model's variable paths are the Hugging Face `CLIPModel` names, so a HF
//! safetensors file (`openai/clip-vit-base-patch16` layout) loads by name.
//! OpenAI / open_clip files (`visual.conv1.weight`, fused `in_proj_weight`,
//! `[D, C]` projections) are first renamed to HF names by [`openai_to_hf`].

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
    let vars = vs
        .variables()
        .into_iter()
        .filter_map(|(name, t)| Some((name.strip_prefix(prefix)?.to_string(), t)))
        .collect();
    copy_named(vars, tensors, path)
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
