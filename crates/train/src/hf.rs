//! Hugging Face `CLIPModel` folders: reading one to start from, writing
//! one from a checkpoint (`train export-hf`), so `transformers` users get
//! the trained encoders with `CLIPModel.from_pretrained(dir)`.

use std::path::Path;

use anyhow::{Context, Result};
use model::ClipConfig;
use tch::{Tensor, nn::VarStore};

use crate::session::Session;

/// The weights file of a HF folder.
const WEIGHTS: &str = "model.safetensors";

/// The encoders' configuration from `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<ClipConfig> {
    let path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    ClipConfig::from_hf_json(&json).with_context(|| format!("{}: not a CLIPConfig", path.display()))
}

/// Loads `dir/model.safetensors` (HF or OpenAI naming) into the `clip.*`
/// variables of an MMCLIP `VarStore`; the decoders keep their initialisation.
pub fn load_weights(dir: &Path, vs: &VarStore) -> Result<()> {
    let path = dir.join(WEIGHTS);
    model::load::load_clip_safetensors_at(vs, "clip.", &path).map_err(Into::into)
}

/// The `clip.*` variables under their HF names, on the CPU (the fused
/// self-attention `qkv_proj` split into HF's `q_proj`, `k_proj`, `v_proj`).
pub fn clip_tensors(vs: &VarStore) -> Vec<(String, Tensor)> {
    let named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter_map(|(name, t)| {
            Some((
                name.strip_prefix("clip.")?.to_string(),
                t.detach().to_device(tch::Device::Cpu).contiguous(),
            ))
        })
        .collect();
    let mut named = model::load::split_qkv(named);
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Writes `session`'s encoders as a HF `CLIPModel` folder at `out`:
/// `model.safetensors`, `config.json`, `tokenizer.json`,
/// `preprocessor_config.json`. Written beside and renamed into place.
pub fn export(session: &Session, tokenizer_json: &Path, out: &Path) -> Result<()> {
    let partial = out.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let named = clip_tensors(&session.vs);
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, partial.join(WEIGHTS)).context("writing model.safetensors")?;
    let config = session.run.mmclip.clip.to_hf_json();
    std::fs::write(
        partial.join("config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    std::fs::copy(tokenizer_json, partial.join("tokenizer.json"))
        .with_context(|| format!("copying {}", tokenizer_json.display()))?;
    let side = session.run.mmclip.clip.vision.image_size;
    let preprocessor = serde_json::json!({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": true, "size": {"shortest_edge": side},
        "do_center_crop": true, "crop_size": {"height": side, "width": side},
        "do_normalize": true, "image_mean": pipeline::CLIP_MEAN, "image_std": pipeline::CLIP_STD,
        "do_convert_rgb": true, "resample": 3,
    });
    std::fs::write(
        partial.join("preprocessor_config.json"),
        serde_json::to_vec_pretty(&preprocessor)?,
    )?;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("replacing {}", out.display()))?;
    }
    std::fs::rename(&partial, out).with_context(|| format!("moving {} into place", out.display()))
}
