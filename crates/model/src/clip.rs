//! The two encoders, their projections to the joint space, and the logit scale.
//!
//! Mirrors `CLIPModel` in `transformers/models/clip/modeling_clip.py`
//! (transformers 5.24). Named stages follow open_clip: [`Clip::encode_image`],
//! [`Clip::encode_text`].

use tch::Tensor;
use tch::nn;

use crate::cast;
use crate::config::ClipConfig;
use crate::text::TextTransformer;
use crate::vision::VisionTransformer;

/// Projected encoder outputs: the pooled embedding and the per-token features.
#[derive(Debug)]
pub struct Encoded {
    /// Pooled embedding (class token / end-of-text token), `[B, C]`, not normalised.
    pub pooled: Tensor,
    /// Per-token projected features: E_img `[B, N, C]` (patches, no class
    /// token) or E_report / E_prompt `[B, L, C]` (every position).
    pub tokens: Tensor,
}

/// CLIP: image encoder, text encoder, projections and learnable temperature.
#[derive(Debug)]
pub struct Clip {
    vision_model: VisionTransformer,
    text_model: TextTransformer,
    visual_projection: nn::Linear,
    text_projection: nn::Linear,
    logit_scale: Tensor,
}

impl Clip {
    /// Builds the model under `p` with HF `CLIPModel` variable names.
    pub fn new(p: nn::Path, cfg: &ClipConfig) -> Self {
        let no_bias = nn::LinearConfig {
            bias: false,
            ..Default::default()
        };
        let c = cfg.projection_dim;
        Self {
            vision_model: VisionTransformer::new(&p / "vision_model", &cfg.vision),
            text_model: TextTransformer::new(&p / "text_model", &cfg.text),
            visual_projection: nn::linear(
                &p / "visual_projection",
                cfg.vision.hidden_size,
                c,
                no_bias,
            ),
            text_projection: nn::linear(&p / "text_projection", cfg.text.hidden_size, c, no_bias),
            logit_scale: p.var(
                "logit_scale",
                &[],
                nn::Init::Const(cfg.logit_scale_init_value),
            ),
        }
    }

    /// `pixels: [B, 3, H, W]` → pooled `[B, C]` and patch tokens E_img `[B, N, C]`.
    pub fn encode_image(&self, pixels: &Tensor) -> Encoded {
        let (pooled, tokens) = self.vision_model.forward(pixels);
        Encoded {
            pooled: cast::linear(&self.visual_projection, &pooled),
            tokens: cast::linear(&self.visual_projection, &tokens),
        }
    }

    /// The image encoder on visible patches only (`ids_keep: [B, K]`, from
    /// [`crate::att_mim::MaskSelection`]) → pooled `[B, C]`, tokens `[B, K, C]`.
    pub fn encode_image_visible(&self, pixels: &Tensor, ids_keep: &Tensor) -> Encoded {
        let (pooled, tokens) = self.vision_model.forward_visible(pixels, ids_keep);
        Encoded {
            pooled: cast::linear(&self.visual_projection, &pooled),
            tokens: cast::linear(&self.visual_projection, &tokens),
        }
    }

    /// The image encoder's last hidden state on the visible patches,
    /// unprojected, class token first: `[B, 1 + K, D]` (the MAE decoder's input).
    pub fn image_hidden_visible(&self, pixels: &Tensor, ids_keep: &Tensor) -> Tensor {
        self.vision_model.forward_visible_hidden(pixels, ids_keep)
    }

    /// The text encoder's unprojected token states `[B, L, D]` with the
    /// token embedding at `selected` (`[B, L]` bool) replaced by
    /// `mask_embedding` (`[D]`): EntMLM's masked report.
    pub fn text_hidden_masked(
        &self,
        input_ids: &Tensor,
        selected: &Tensor,
        mask_embedding: &Tensor,
    ) -> Tensor {
        self.text_model
            .forward_replacing(input_ids, Some((selected, mask_embedding)))
            .1
    }

    /// `input_ids: [B, L]` → pooled `[B, C]` and token features `[B, L, C]`.
    pub fn encode_text(&self, input_ids: &Tensor) -> Encoded {
        let (pooled, tokens) = self.text_model.forward(input_ids);
        Encoded {
            pooled: cast::linear(&self.text_projection, &pooled),
            tokens: cast::linear(&self.text_projection, &tokens),
        }
    }

    /// The learnable log temperature (a scalar; the logits use its `exp`).
    pub fn logit_scale(&self) -> &Tensor {
        &self.logit_scale
    }

    /// The text encoder, e.g. for its end-of-text positions.
    pub fn text_model(&self) -> &TextTransformer {
        &self.text_model
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn vit_b16_clip_has_149_620_737_parameters() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _clip = Clip::new(vs.root(), &ClipConfig::vit_b16());
        assert_eq!(crate::count_parameters(&vs), 149_620_737);
    }

    #[test]
    fn tiny_clip_outputs_have_the_documented_shapes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ClipConfig::tiny();
        let clip = Clip::new(vs.root(), &cfg);
        let image = clip.encode_image(&Tensor::zeros([2, 3, 32, 32], (Kind::Float, Device::Cpu)));
        assert_eq!(image.pooled.size(), vec![2, 24]);
        assert_eq!(image.tokens.size(), vec![2, 16, 24]);
        let ids = Tensor::from_slice(&[3i64, 99, 0, 0, 5, 6, 99, 0]).view([2, 4]);
        let text = clip.encode_text(&ids);
        assert_eq!(text.pooled.size(), vec![2, 24]);
        assert_eq!(text.tokens.size(), vec![2, 4, 24]);
        // The pooled embedding is the end-of-text token's (positions 1 and 2).
        assert!(
            text.pooled
                .get(0)
                .allclose(&text.tokens.get(0).get(1), 1e-6, 1e-6, false)
        );
        assert!(
            text.pooled
                .get(1)
                .allclose(&text.tokens.get(1).get(2), 1e-6, 1e-6, false)
        );
    }

    #[test]
    fn encoding_every_patch_as_visible_equals_the_full_encoding() {
        let vs = nn::VarStore::new(Device::Cpu);
        let clip = Clip::new(vs.root(), &ClipConfig::tiny());
        tch::manual_seed(3);
        let pixels = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let all = Tensor::arange(16, (Kind::Int64, Device::Cpu)).expand([2, 16], false);
        let full = clip.encode_image(&pixels);
        let visible = clip.encode_image_visible(&pixels, &all);
        assert!(full.pooled.allclose(&visible.pooled, 1e-5, 1e-6, false));
        assert!(full.tokens.allclose(&visible.tokens, 1e-5, 1e-6, false));
        let some = Tensor::from_slice(&[0i64, 5, 9, 15, 2, 3, 4, 1]).view([2, 4]);
        assert_eq!(
            clip.encode_image_visible(&pixels, &some).tokens.size(),
            vec![2, 4, 24]
        );
    }

    #[test]
    fn gradients_reach_every_trainable_parameter() {
        let vs = nn::VarStore::new(Device::Cpu);
        let clip = Clip::new(vs.root(), &ClipConfig::tiny());
        tch::manual_seed(4);
        let pixels = Tensor::randn([3, 3, 32, 32], (Kind::Float, Device::Cpu));
        let ids = Tensor::randint(99, [3, 16], (Kind::Int64, Device::Cpu));
        let _ = ids.narrow(1, 15, 1).fill_(99);
        let (image, text) = (clip.encode_image(&pixels), clip.encode_text(&ids));
        let loss = crate::losses::clip_loss(&image.pooled, &text.pooled, clip.logit_scale());
        loss.backward();
        for (name, var) in vs.variables() {
            let grad = var.grad();
            assert!(grad.defined(), "{name} has no gradient");
            assert!(
                grad.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{name} has a zero gradient"
            );
        }
    }

    #[test]
    fn variable_names_are_the_hugging_face_ones_but_the_fused_qkv() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _clip = Clip::new(vs.root(), &ClipConfig::tiny());
        let vars = vs.variables();
        for name in [
            "vision_model.embeddings.patch_embedding.weight",
            "vision_model.embeddings.class_embedding",
            "vision_model.pre_layrnorm.weight",
            "vision_model.encoder.layers.1.self_attn.qkv_proj.weight",
            "text_model.encoder.layers.0.mlp.fc2.bias",
            "text_model.final_layer_norm.bias",
            "visual_projection.weight",
            "text_projection.weight",
            "logit_scale",
        ] {
            assert!(vars.contains_key(name), "missing {name}");
        }
    }
}
