//! Model configuration: one struct per encoder, field names as in Hugging
//! Face's `CLIPVisionConfig` / `CLIPTextConfig` so a `config.json` maps over.

use serde::{Deserialize, Serialize};

/// The ViT image encoder (HF `CLIPVisionConfig`). `Default` is ViT-B/16.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    /// Width of the residual stream (D).
    pub hidden_size: i64,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: i64,
    /// Number of transformer layers.
    pub num_hidden_layers: i64,
    /// Number of attention heads; `hidden_size` must be a multiple of it.
    pub num_attention_heads: i64,
    /// Input side in pixels (square images).
    pub image_size: i64,
    /// Patch side in pixels; `image_size / patch_size` patches per side.
    pub patch_size: i64,
    /// Input channels.
    pub num_channels: i64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// CLIP ViT-B/16: 224 px, 16 px patches (14×14 = 196), 12 layers, width 768, 12 heads.
    pub fn vit_b16() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 224,
            patch_size: 16,
            num_channels: 3,
            layer_norm_eps: 1e-5,
        }
    }

    /// A tiny encoder for tests (32 px, 8 px patches, 2 layers, width 32);
    /// `python/model_ref/make_golden.py` builds the same.
    pub fn tiny() -> Self {
        Self {
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            image_size: 32,
            patch_size: 8,
            num_channels: 3,
            layer_norm_eps: 1e-5,
        }
    }

    /// Number of patches per image (N_img), without the class token.
    pub fn num_patches(&self) -> i64 {
        (self.image_size / self.patch_size).pow(2)
    }
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self::vit_b16()
    }
}

/// The causal text transformer (HF `CLIPTextConfig`). `Default` is CLIP's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    /// Vocabulary size (49,408 for the CLIP BPE).
    pub vocab_size: i64,
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: i64,
    /// Number of transformer layers.
    pub num_hidden_layers: i64,
    /// Number of attention heads.
    pub num_attention_heads: i64,
    /// Context length (77).
    pub max_position_embeddings: i64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Token pooled as the sequence embedding: `None` pools at the largest id
    /// (argmax of `input_ids`, the OpenAI tokenizer's end-of-text, as HF does
    /// for `eos_token_id == 2` checkpoints); `Some(id)` at the first `id`.
    pub eos_token_id: Option<i64>,
}

impl TextConfig {
    /// The CLIP text transformer: 12 layers, width 512, 8 heads, context 77.
    pub fn clip_base() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            layer_norm_eps: 1e-5,
            eos_token_id: None,
        }
    }

    /// A tiny text encoder for tests (vocab 100, context 16, 2 layers, width 32).
    pub fn tiny() -> Self {
        Self {
            vocab_size: 100,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            max_position_embeddings: 16,
            layer_norm_eps: 1e-5,
            eos_token_id: None,
        }
    }
}

impl Default for TextConfig {
    fn default() -> Self {
        Self::clip_base()
    }
}

/// Both encoders and their joint embedding space (HF `CLIPConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    /// The image encoder.
    pub vision: VisionConfig,
    /// The text encoder.
    pub text: TextConfig,
    /// Width C of the joint embedding space (512).
    pub projection_dim: i64,
    /// Initial value of the learnable log temperature (CLIP: ln(1/0.07)).
    pub logit_scale_init_value: f64,
}

impl ClipConfig {
    /// CLIP ViT-B/16 ("clip-base"), the paper's initialisation.
    pub fn vit_b16() -> Self {
        Self {
            vision: VisionConfig::vit_b16(),
            text: TextConfig::clip_base(),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
        }
    }

    /// Tiny encoders with C = 24, matching `python/model_ref/make_golden.py`.
    pub fn tiny() -> Self {
        Self {
            vision: VisionConfig::tiny(),
            text: TextConfig::tiny(),
            projection_dim: 24,
            logit_scale_init_value: 2.6592,
        }
    }
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self::vit_b16()
    }
}

/// HF's `eos_token_id` of the original OpenAI checkpoints: `CLIPTextTransformer`
/// then pools at the largest token id (legacy), as `TextConfig::eos_token_id = None`.
const HF_LEGACY_EOS: i64 = 2;

impl ClipConfig {
    /// Reads a Hugging Face `CLIPConfig` (`config.json` of a `CLIPModel`).
    pub fn from_hf_json(json: &serde_json::Value) -> Result<Self, serde_json::Error> {
        let part = |key: &str| json.get(key).cloned().unwrap_or(serde_json::json!({}));
        let mut text: TextConfig = serde_json::from_value(part("text_config"))?;
        if text.eos_token_id == Some(HF_LEGACY_EOS) {
            text.eos_token_id = None;
        }
        let default = ClipConfig::vit_b16();
        Ok(ClipConfig {
            vision: serde_json::from_value(part("vision_config"))?,
            text,
            projection_dim: json
                .get("projection_dim")
                .and_then(|v| v.as_i64())
                .unwrap_or(default.projection_dim),
            logit_scale_init_value: json
                .get("logit_scale_init_value")
                .and_then(|v| v.as_f64())
                .unwrap_or(default.logit_scale_init_value),
        })
    }

    /// The Hugging Face `CLIPConfig` that `transformers` builds this model from.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut vision = serde_json::to_value(&self.vision).expect("serialisable");
        let mut text = serde_json::to_value(&self.text).expect("serialisable");
        text["eos_token_id"] = self.text.eos_token_id.unwrap_or(HF_LEGACY_EOS).into();
        for part in [&mut vision, &mut text] {
            part["hidden_act"] = "quick_gelu".into();
            part["projection_dim"] = self.projection_dim.into();
        }
        serde_json::json!({
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            "text_config": text,
            "vision_config": vision,
            "torch_dtype": "float32",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugging_face_config_round_trips() {
        for cfg in [ClipConfig::vit_b16(), ClipConfig::tiny()] {
            let json = cfg.to_hf_json();
            assert_eq!(json["text_config"]["eos_token_id"], 2);
            assert_eq!(json["vision_config"]["hidden_act"], "quick_gelu");
            assert_eq!(ClipConfig::from_hf_json(&json).unwrap(), cfg);
        }
        let mut with_eos = ClipConfig::tiny();
        with_eos.text.eos_token_id = Some(49407);
        assert_eq!(
            ClipConfig::from_hf_json(&with_eos.to_hf_json()).unwrap(),
            with_eos
        );
    }
}
