//! The ViT image encoder.
//!
//! Mirrors `CLIPVisionEmbeddings` and `CLIPVisionTransformer` in
//! `transformers/models/clip/modeling_clip.py` (transformers 5.24): patch
//! conv without bias, class token, learned positions, `pre_layrnorm` (HF's
//! spelling), the pre-LN encoder, and `post_layernorm`.

use tch::Tensor;
use tch::nn::{self, Module};

use crate::attention::Encoder;
use crate::cast;
use crate::config::VisionConfig;

/// Patch, class-token and position embeddings (`embeddings.*`).
#[derive(Debug)]
pub struct VisionEmbeddings {
    class_embedding: Tensor,
    patch_embedding: nn::Conv2D,
    position_embedding: nn::Embedding,
}

impl VisionEmbeddings {
    /// Builds the embeddings under `p`.
    pub fn new(p: nn::Path, cfg: &VisionConfig) -> Self {
        let d = cfg.hidden_size;
        let conv = nn::ConvConfig {
            stride: cfg.patch_size,
            bias: false,
            ..Default::default()
        };
        let emb = nn::EmbeddingConfig {
            ws_init: nn::Init::Randn {
                mean: 0.,
                stdev: 0.02,
            },
            ..Default::default()
        };
        Self {
            class_embedding: p.randn("class_embedding", &[d], 0., 0.02),
            patch_embedding: nn::conv2d(
                &p / "patch_embedding",
                cfg.num_channels,
                d,
                cfg.patch_size,
                conv,
            ),
            // Left out of weight decay (see NO_WEIGHT_DECAY).
            position_embedding: nn::embedding(
                (&p / "position_embedding").set_group(crate::NO_WEIGHT_DECAY),
                cfg.num_patches() + 1,
                d,
                emb,
            ),
        }
    }

    /// `pixels: [B, 3, H, W]` → `[B, 1 + N, D]`, class token first.
    pub fn forward(&self, pixels: &Tensor) -> Tensor {
        // `patch_embedding`'s forward (stride = kernel = patch, no bias,
        // no padding) with its weight cast once per step.
        let ws = cast::weight(&self.patch_embedding.ws);
        let patch = ws.size()[2];
        let patches = pixels
            .conv2d(&ws, None::<Tensor>, [patch, patch], 0, 1, 1)
            .flatten(2, -1)
            .transpose(1, 2); // [B, N, D]
        let (b, _, d) = patches.size3().expect("patch embeddings are [B, N, D]");
        let cls = self
            .class_embedding
            .view([1, 1, d])
            .expand([b, 1, d], false); // [B, 1, D]
        Tensor::cat(&[cls, patches], 1) + &self.position_embedding.ws // [B, 1 + N, D]
    }
}

/// The image encoder without projection (`vision_model.*`).
#[derive(Debug)]
pub struct VisionTransformer {
    embeddings: VisionEmbeddings,
    pre_layrnorm: nn::LayerNorm,
    encoder: Encoder,
    post_layernorm: nn::LayerNorm,
}

impl VisionTransformer {
    /// Builds the encoder under `p` (HF: `vision_model`).
    pub fn new(p: nn::Path, cfg: &VisionConfig) -> Self {
        let ln = nn::LayerNormConfig {
            eps: cfg.layer_norm_eps,
            ..Default::default()
        };
        let d = cfg.hidden_size;
        Self {
            embeddings: VisionEmbeddings::new(&p / "embeddings", cfg),
            pre_layrnorm: nn::layer_norm(&p / "pre_layrnorm", vec![d], ln),
            encoder: Encoder::new(
                &p / "encoder",
                cfg.num_hidden_layers,
                d,
                cfg.num_attention_heads,
                cfg.intermediate_size,
                cfg.layer_norm_eps,
            ),
            post_layernorm: nn::layer_norm(&p / "post_layernorm", vec![d], ln),
        }
    }

    /// `pixels: [B, 3, H, W]` → (pooled `[B, D]`, patch tokens `[B, N, D]`).
    ///
    /// Both pass through `post_layernorm`: HF applies it to the class token
    /// only; the patch tokens get it too, as open_clip's `output_tokens` does,
    /// so that they live in the same space before projection.
    pub fn forward(&self, pixels: &Tensor) -> (Tensor, Tensor) {
        let xs = self.pre_layrnorm.forward(&self.embeddings.forward(pixels));
        let xs = self
            .post_layernorm
            .forward(&self.encoder.forward(&xs, false)); // [B, 1 + N, D]
        (xs.select(1, 0), xs.narrow(1, 1, xs.size()[1] - 1))
    }

    /// MAE-style encoding of the visible patches only (AttMIM "input" mode):
    /// `ids_keep: [B, K]` patch indices → (pooled `[B, D]`, tokens `[B, K, D]`).
    /// Positions are added before the gather, so each kept patch keeps its own.
    pub fn forward_visible(&self, pixels: &Tensor, ids_keep: &Tensor) -> (Tensor, Tensor) {
        let xs = self.forward_visible_hidden(pixels, ids_keep);
        let k = ids_keep.size()[1];
        (xs.select(1, 0), xs.narrow(1, 1, k))
    }

    /// The last hidden state of [`VisionTransformer::forward_visible`],
    /// class token first: `[B, 1 + K, D]`, what MAE's decoder takes in.
    pub fn forward_visible_hidden(&self, pixels: &Tensor, ids_keep: &Tensor) -> Tensor {
        let xs = self.embeddings.forward(pixels); // [B, 1 + N, D]
        let (b, t, d) = xs.size3().expect("embeddings are [B, 1 + N, D]");
        let k = ids_keep.size()[1];
        let patches = xs.narrow(1, 1, t - 1).gather(
            1,
            &ids_keep.unsqueeze(-1).expand([b, k, d], false),
            false,
        );
        let xs = Tensor::cat(&[xs.narrow(1, 0, 1), patches], 1); // [B, 1 + K, D]
        self.post_layernorm
            .forward(&self.encoder.forward(&self.pre_layrnorm.forward(&xs), false))
    }
}
