//! EntMLM: entity-driven masked language modelling (METHOD.md, "EntMLM").
//!
//! [`select_tokens`] picks the report positions to predict (a pure
//! function of masks and a noise tensor, like [`crate::att_mim`]);
//! [`TextDecoder`] is the CoCa-style multimodal decoder that predicts them
//! from the report, with a learned mask embedding in place of each selected
//! token, and the image tokens; the loss is [`crate::losses::mlm_loss`].
//! [`crate::Mmclip`]'s training step uses all three.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::attention::{Activation, Attention, Mlp};
use crate::cast;
use crate::config::ClipConfig;

/// Which report tokens are predicted (the paper's ablation, Table 4).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "p")]
pub enum MlmStrategy {
    /// Caption every predictable token (CoCa).
    Full,
    /// A random fraction p of the predictable tokens.
    Random(f64),
    /// A random fraction p (λ3 = 0.2) of the entity tokens.
    Entity(f64),
}

impl Default for MlmStrategy {
    fn default() -> Self {
        MlmStrategy::Entity(0.2)
    }
}

/// M_EntMLM = RandomSubset(M_e, λ3) ∩ CausalMask, `[B, L]` bool.
///
/// `predictable: [B, L]` bool marks the positions a causal decoder can
/// predict (real tokens after the start token, up to end-of-text);
/// `entity: [B, L]` bool the tokens inside NER spans; `noise: [B, L]`
/// uniform in [0, 1). Each row takes ⌈p·n⌉ of its n eligible positions,
/// those with the lowest noise, so the count is exact and a seed fixes it.
pub fn select_tokens(
    predictable: &Tensor,
    entity: &Tensor,
    noise: &Tensor,
    strategy: MlmStrategy,
) -> Tensor {
    let (eligible, p) = match strategy {
        MlmStrategy::Full => return predictable.shallow_clone(),
        MlmStrategy::Random(p) => (predictable.shallow_clone(), p),
        MlmStrategy::Entity(p) => (entity.logical_and(predictable), p),
    };
    // Counted in f64: in f32 the 1e-9 guard below vanishes and ⌈0.3·50⌉ gives 16.
    let n = eligible.sum_dim_intlist([-1i64].as_slice(), true, Kind::Double); // [B, 1]
    let k = (n * p - 1e-9).ceil().clamp_min(0.0); // [B, 1]
    // Ineligible positions sort after every eligible one (key ≥ 1).
    let key = noise + eligible.logical_not().to_kind(Kind::Float);
    let rank = key
        .argsort(-1, false)
        .argsort(-1, false)
        .to_kind(Kind::Float); // [B, L]
    rank.to_kind(Kind::Double)
        .lt_tensor(&k)
        .logical_and(&eligible)
}

/// The most positions [`select_tokens`] can select in a row `l` wide:
/// ⌈p·(l − 1)⌉ of the at most l − 1 predictable positions (l − 1 for
/// [`MlmStrategy::Full`]). It depends on the strategy and the width alone.
pub fn capacity(strategy: MlmStrategy, l: i64) -> i64 {
    let predictable = (l - 1).max(0);
    match strategy {
        MlmStrategy::Full => predictable,
        // As `select_tokens` rounds, in f64.
        MlmStrategy::Random(p) | MlmStrategy::Entity(p) => {
            ((predictable as f64 * p - 1e-9).ceil().max(0.0) as i64).min(predictable)
        }
    }
}

/// The positions of `selected: [B, L]` as a list of fixed size: `index:
/// [B, K]` holds each row's selected positions first, in order, then
/// unselected ones; `mask: [B, K]` tells which slots are selected. With
/// K = [`capacity`] every selected position has a slot, and the shapes
/// depend on K alone: no count is read back, where indexing with the
/// boolean mask (`nonzero`) makes the host wait for the device.
#[derive(Debug)]
pub struct Slots {
    /// `[B, K]` int64 positions.
    pub index: Tensor,
    /// `[B, K]` bool: the slot holds a selected position.
    pub mask: Tensor,
}

/// [`Slots`] of `selected: [B, L]` with `k` slots per row (`k` ≤ L).
pub fn slots(selected: &Tensor, k: i64) -> Slots {
    let (_, l) = selected.size2().expect("selected must be [B, L]");
    // Selected positions sort first, each group by position.
    let key = selected.logical_not().to_kind(Kind::Int64) * l
        + Tensor::arange(l, (Kind::Int64, selected.device())).unsqueeze(0);
    let (_, order) = key.topk(k, -1, false, true);
    Slots {
        mask: selected.gather(1, &order, false),
        index: order,
    }
}

/// Text decoder settings a user chooses. `Default`: 3 layers, 8 heads, MLP
/// width 2048. Its widths and vocabulary follow from the encoders
/// ([`TextDecoderDims`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TextDecoderConfig {
    /// Layers (3).
    pub num_layers: i64,
    /// Attention heads.
    pub num_heads: i64,
    /// MLP hidden width.
    pub intermediate_size: i64,
}

impl Default for TextDecoderConfig {
    fn default() -> Self {
        Self {
            num_layers: 3,
            num_heads: 8,
            intermediate_size: 2048,
        }
    }
}

impl TextDecoderConfig {
    /// A tiny decoder for tests: 1 layer, 2 heads, MLP width 64.
    pub fn tiny() -> Self {
        Self {
            num_layers: 1,
            num_heads: 2,
            intermediate_size: 64,
        }
    }
}

/// The text decoder's sizes that the encoders fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextDecoderDims {
    /// Width of the text tokens fed in: the text encoder's (512).
    pub hidden_size: i64,
    /// Width of the image tokens attended to: C (512, projected E_img).
    pub image_dim: i64,
    /// Output vocabulary: the text encoder's (49,408).
    pub vocab_size: i64,
}

impl TextDecoderDims {
    /// The sizes for `clip`'s encoders.
    pub fn of(clip: &ClipConfig) -> Self {
        Self {
            hidden_size: clip.text.hidden_size,
            image_dim: clip.projection_dim,
            vocab_size: clip.text.vocab_size,
        }
    }
}

/// One decoder layer: causal self-attention, cross-attention to the image, MLP (pre-LN).
#[derive(Debug)]
pub struct DecoderLayer {
    layer_norm1: nn::LayerNorm,
    self_attn: Attention,
    layer_norm_cross: nn::LayerNorm,
    cross_attn: Attention,
    layer_norm2: nn::LayerNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    /// Builds the layer under `p`.
    pub fn new(p: nn::Path, cfg: &TextDecoderConfig, dims: TextDecoderDims) -> Self {
        let d = dims.hidden_size;
        let ln = |name: &str| nn::layer_norm(&p / name, vec![d], Default::default());
        Self {
            layer_norm1: ln("layer_norm1"),
            self_attn: Attention::new(&p / "self_attn", d, cfg.num_heads),
            layer_norm_cross: ln("layer_norm_cross"),
            cross_attn: Attention::cross(&p / "cross_attn", d, dims.image_dim, cfg.num_heads),
            layer_norm2: ln("layer_norm2"),
            mlp: Mlp::new(&p / "mlp", d, cfg.intermediate_size, Activation::Gelu),
        }
    }

    /// `xs: [B, L, D]`, `image: [B, N, C]` → `[B, L, D]`.
    pub fn forward(&self, xs: &Tensor, image: &Tensor) -> Tensor {
        let xs = xs + self.self_attn.forward(&self.layer_norm1.forward(xs), true);
        let xs = &xs
            + self
                .cross_attn
                .attend(&self.layer_norm_cross.forward(&xs), image, false);
        &xs + self.mlp.forward(&self.layer_norm2.forward(&xs))
    }
}

/// The CoCa-style multimodal text decoder with its vocabulary head.
#[derive(Debug)]
pub struct TextDecoder {
    layers: Vec<DecoderLayer>,
    final_layer_norm: nn::LayerNorm,
    lm_head: nn::Linear,
}

impl TextDecoder {
    /// Builds the decoder under `p` (`layers.{i}`, `final_layer_norm`, `lm_head`).
    pub fn new(p: nn::Path, cfg: &TextDecoderConfig, dims: TextDecoderDims) -> Self {
        Self {
            layers: (0..cfg.num_layers)
                .map(|i| DecoderLayer::new(&p / "layers" / i, cfg, dims))
                .collect(),
            final_layer_norm: nn::layer_norm(
                &p / "final_layer_norm",
                vec![dims.hidden_size],
                Default::default(),
            ),
            lm_head: nn::linear(
                &p / "lm_head",
                dims.hidden_size,
                dims.vocab_size,
                Default::default(),
            ),
        }
    }

    /// `text: [B, L, D]` (text-encoder tokens of the masked report),
    /// `image: [B, N, C]` → logits `[B, L, V]`.
    pub fn forward(&self, text: &Tensor, image: &Tensor) -> Tensor {
        cast::linear(&self.lm_head, &self.hidden(text, image))
    }

    /// Logits at the positions of `index: [B, K]` only ([`Slots`]) →
    /// `[B·K, V]`, row-major over (b, slot). The vocabulary head is the
    /// decoder's largest cost (B·L·49,408 logits); EntMLM scores a few
    /// positions per report.
    pub fn forward_selected(&self, text: &Tensor, image: &Tensor, index: &Tensor) -> Tensor {
        let hidden = self.hidden(text, image); // [B, L, D]
        let (b, k) = index.size2().expect("index must be [B, K]");
        let d = hidden.size()[2];
        let rows = hidden.gather(1, &index.unsqueeze(-1).expand([b, k, d], false), false);
        cast::linear(&self.lm_head, &rows.reshape([-1, d]))
    }

    /// The final-normed decoder states `[B, L, D]`.
    fn hidden(&self, text: &Tensor, image: &Tensor) -> Tensor {
        let mut xs = text.shallow_clone();
        for layer in &self.layers {
            xs = layer.forward(&xs, image);
        }
        self.final_layer_norm.forward(&xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::att_mim::mask_noise;
    use tch::Device;

    fn row(v: &[bool]) -> Tensor {
        Tensor::from_slice(v).view([1, v.len() as i64])
    }

    #[test]
    fn entity_strategy_takes_ceil_lambda3_of_entities_inside_the_causal_mask() {
        // 12 positions; predictable 1..=9; entities at 2..=6 and at 11 (padding).
        let pred: Vec<bool> = (0..12).map(|t| (1..=9).contains(&t)).collect();
        let ent: Vec<bool> = (0..12).map(|t| (2..=6).contains(&t) || t == 11).collect();
        let (pred, ent) = (row(&pred), row(&ent));
        for seed in 0..20 {
            let sel = select_tokens(
                &pred,
                &ent,
                &mask_noise(1, 12, seed, Device::Cpu),
                MlmStrategy::Entity(0.2),
            );
            assert_eq!(sel.sum(Kind::Int64).int64_value(&[]), 1); // ⌈0.2·5⌉
            let outside = sel
                .logical_and(&ent.logical_and(&pred).logical_not())
                .any()
                .int64_value(&[]);
            assert_eq!(outside, 0, "seed {seed}");
        }
        let sel = select_tokens(
            &pred,
            &ent,
            &mask_noise(1, 12, 0, Device::Cpu),
            MlmStrategy::Entity(0.5),
        );
        assert_eq!(sel.sum(Kind::Int64).int64_value(&[]), 3); // ⌈2.5⌉
    }

    #[test]
    fn counts_are_exact_where_float32_rounding_would_add_one() {
        // ⌈0.3·50⌉ = 15; computed in f32, 0.3·50 rounds above 15.
        let pred = Tensor::ones([1, 60], (Kind::Bool, Device::Cpu));
        let _ = pred.narrow(1, 50, 10).fill_(0);
        let noise = mask_noise(1, 60, 4, Device::Cpu);
        let sel = select_tokens(&pred, &pred, &noise, MlmStrategy::Random(0.3));
        assert_eq!(sel.sum(Kind::Int64).int64_value(&[]), 15);
    }

    #[test]
    fn full_and_random_strategies_count_predictable_tokens() {
        let pred = row(&[false, true, true, true, true, false]);
        let none = row(&[false; 6]);
        let noise = mask_noise(1, 6, 9, Device::Cpu);
        assert!(select_tokens(&pred, &none, &noise, MlmStrategy::Full).equal(&pred));
        let sel = select_tokens(&pred, &none, &noise, MlmStrategy::Random(0.5));
        assert_eq!(sel.sum(Kind::Int64).int64_value(&[]), 2);
        assert_eq!(
            sel.logical_and(&pred.logical_not()).any().int64_value(&[]),
            0
        );
        // No entities: nothing selected, no NaN.
        let sel = select_tokens(&pred, &none, &noise, MlmStrategy::Entity(0.2));
        assert_eq!(sel.any().int64_value(&[]), 0);
    }

    /// Rows with every position predictable and an entity select the most
    /// a strategy can; `slots` lists each row's selected positions, in
    /// order, and no other as selected.
    #[test]
    fn slots_of_capacity_hold_every_selected_position_in_order() {
        let (b, l) = (6, 77);
        let pred = Tensor::ones([b, l], (Kind::Bool, Device::Cpu));
        let _ = pred.narrow(1, 0, 1).fill_(0);
        // Rows of 76, 61, …, 1 predictable positions.
        for r in 1..b {
            let _ = pred.narrow(0, r, 1).narrow(1, l - 15 * r, 15 * r).fill_(0);
        }
        let noise = mask_noise(b, l, 3, Device::Cpu);
        for strategy in [
            MlmStrategy::Full,
            MlmStrategy::Random(0.15),
            MlmStrategy::Entity(0.2),
            MlmStrategy::Entity(1.0),
        ] {
            let sel = select_tokens(&pred, &pred, &noise, strategy);
            let k = capacity(strategy, l);
            let most = sel
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Int64)
                .max();
            assert_eq!(
                most.int64_value(&[]),
                k,
                "{strategy:?}: the fullest row fills the capacity"
            );
            let s = slots(&sel, k);
            assert_eq!(s.index.size(), vec![b, k]);
            for r in 0..b {
                let want: Vec<i64> = Vec::try_from(&sel.get(r).nonzero().squeeze_dim(1)).unwrap();
                let listed = s.index.get(r).masked_select(&s.mask.get(r));
                assert_eq!(
                    Vec::<i64>::try_from(&listed).unwrap(),
                    want,
                    "{strategy:?} row {r}"
                );
            }
        }
        assert_eq!(capacity(MlmStrategy::Entity(0.2), 77), 16);
        assert_eq!(capacity(MlmStrategy::Random(0.3), 51), 15);
        assert_eq!(capacity(MlmStrategy::Full, 1), 0);
    }

    #[test]
    fn decoder_is_causal_in_text_and_sees_the_image() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = TextDecoderConfig {
            num_layers: 2,
            num_heads: 2,
            intermediate_size: 32,
        };
        let dims = TextDecoderDims {
            hidden_size: 16,
            image_dim: 8,
            vocab_size: 50,
        };
        let dec = TextDecoder::new(vs.root(), &cfg, dims);
        tch::manual_seed(1);
        let text = Tensor::randn([1, 5, 16], (Kind::Float, Device::Cpu));
        let image = Tensor::randn([1, 4, 8], (Kind::Float, Device::Cpu));
        let logits = dec.forward(&text, &image);
        assert_eq!(logits.size(), vec![1, 5, 50]);
        // Changing the last token leaves earlier positions' logits unchanged.
        let text2 = text.copy();
        text2
            .get(0)
            .get(4)
            .copy_(&Tensor::ones([16], (Kind::Float, Device::Cpu)));
        let logits2 = dec.forward(&text2, &image);
        assert!(
            logits
                .narrow(1, 0, 4)
                .allclose(&logits2.narrow(1, 0, 4), 1e-6, 1e-6, false)
        );
        // Changing the image changes them.
        let logits3 = dec.forward(&text, &(image + 1.0));
        assert!(
            !logits
                .narrow(1, 0, 1)
                .allclose(&logits3.narrow(1, 0, 1), 1e-4, 1e-4, false)
        );
    }
}
