//! The causal text encoder.
//!
//! Mirrors `CLIPTextEmbeddings` and `CLIPTextTransformer` in
//! `transformers/models/clip/modeling_clip.py` (transformers 5.24): token and
//! learned position embeddings, the pre-LN encoder under a causal mask,
//! `final_layer_norm`, and pooling at the end-of-text token.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::attention::Encoder;
use crate::config::TextConfig;

/// The text encoder without projection (`text_model.*`).
#[derive(Debug)]
pub struct TextTransformer {
    token_embedding: nn::Embedding,
    position_embedding: nn::Embedding,
    encoder: Encoder,
    final_layer_norm: nn::LayerNorm,
    eos_token_id: Option<i64>,
}

impl TextTransformer {
    /// Builds the encoder under `p` (HF: `text_model`).
    pub fn new(p: nn::Path, cfg: &TextConfig) -> Self {
        let d = cfg.hidden_size;
        let emb = nn::EmbeddingConfig {
            ws_init: nn::Init::Randn {
                mean: 0.,
                stdev: 0.02,
            },
            ..Default::default()
        };
        // The tables are left out of weight decay (see NO_WEIGHT_DECAY).
        let e = (&p / "embeddings").set_group(crate::NO_WEIGHT_DECAY);
        Self {
            token_embedding: nn::embedding(&e / "token_embedding", cfg.vocab_size, d, emb),
            position_embedding: nn::embedding(
                &e / "position_embedding",
                cfg.max_position_embeddings,
                d,
                emb,
            ),
            encoder: Encoder::new(
                &p / "encoder",
                cfg.num_hidden_layers,
                d,
                cfg.num_attention_heads,
                cfg.intermediate_size,
                cfg.layer_norm_eps,
            ),
            final_layer_norm: nn::layer_norm(
                &p / "final_layer_norm",
                vec![d],
                nn::LayerNormConfig {
                    eps: cfg.layer_norm_eps,
                    ..Default::default()
                },
            ),
            eos_token_id: cfg.eos_token_id,
        }
    }

    /// Position of the end-of-text token of each row: `[B, L]` → `[B]` (on device).
    pub fn eot_positions(&self, input_ids: &Tensor) -> Tensor {
        match self.eos_token_id {
            None => input_ids.argmax(-1, false),
            // argmax returns the first maximum: the first occurrence of the id.
            Some(id) => input_ids.eq(id).to_kind(Kind::Int).argmax(-1, false),
        }
    }

    /// `input_ids: [B, L]` (int64) → (pooled `[B, D]`, tokens `[B, L, D]`).
    pub fn forward(&self, input_ids: &Tensor) -> (Tensor, Tensor) {
        self.forward_replacing(input_ids, None)
    }

    /// As [`TextTransformer::forward`], with the token embedding of the
    /// positions in `replace.0` (`[B, L]` bool) swapped for the vector
    /// `replace.1` (`[D]`): EntMLM's mask token, which CLIP's vocabulary
    /// lacks. Pooling still reads the end-of-text position from `input_ids`.
    pub fn forward_replacing(
        &self,
        input_ids: &Tensor,
        replace: Option<(&Tensor, &Tensor)>,
    ) -> (Tensor, Tensor) {
        let (b, l) = input_ids.size2().expect("input_ids must be [B, L]");
        let pos = self.position_embedding.ws.narrow(0, 0, l); // [L, D]
        let mut tokens = self.token_embedding.forward(input_ids); // [B, L, D]
        if let Some((selected, embedding)) = replace {
            tokens = tokens.where_self(&selected.logical_not().unsqueeze(-1), embedding);
        }
        let xs = self
            .final_layer_norm
            .forward(&self.encoder.forward(&(tokens + pos), true));
        let d = xs.size()[2];
        let eot = self
            .eot_positions(input_ids)
            .view([b, 1, 1])
            .expand([b, 1, d], false);
        (xs.gather(1, &eot, false).squeeze_dim(1), xs) // [B, D], [B, L, D]
    }
}
