//! The pre-LN transformer shared by both encoders.
//!
//! Mirrors `CLIPAttention`, `CLIPMLP`, `CLIPEncoderLayer` and `CLIPEncoder` in
//! `transformers/models/clip/modeling_clip.py` (transformers 5.24); variable
//! paths are the HF weight names below `encoder`.

use tch::Tensor;
use tch::nn::{self, Module};

/// CLIP's activation: `x · σ(1.702 x)`.
pub fn quick_gelu(xs: &Tensor) -> Tensor {
    xs * (xs * 1.702).sigmoid()
}

/// The MLP's non-linearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// CLIP's [`quick_gelu`].
    QuickGelu,
    /// Exact (erf) GELU, as MAE's decoder (`nn.GELU`).
    Gelu,
}

impl Activation {
    fn apply(self, xs: &Tensor) -> Tensor {
        match self {
            Activation::QuickGelu => quick_gelu(xs),
            Activation::Gelu => xs.gelu("none"),
        }
    }
}

/// Multi-head attention with separate q/k/v projections (HF layout). As
/// self-attention keys and values come from the queries' tokens; as
/// cross-attention ([`Attention::cross`]) from another sequence, possibly of
/// another width.
#[derive(Debug)]
pub struct Attention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    num_heads: i64,
}

impl Attention {
    /// Self-attention under `p` (`q_proj`, `k_proj`, `v_proj`, `out_proj`).
    pub fn new(p: nn::Path, dim: i64, num_heads: i64) -> Self {
        Self::cross(p, dim, dim, num_heads)
    }

    /// Cross-attention under `p`: queries `dim` wide, keys and values
    /// projected from `kv_dim`-wide context tokens.
    pub fn cross(p: nn::Path, dim: i64, kv_dim: i64, num_heads: i64) -> Self {
        assert_eq!(
            dim % num_heads,
            0,
            "width {dim} is not a multiple of {num_heads} heads"
        );
        let c = nn::LinearConfig::default();
        Self {
            q_proj: nn::linear(&p / "q_proj", dim, dim, c),
            k_proj: nn::linear(&p / "k_proj", kv_dim, dim, c),
            v_proj: nn::linear(&p / "v_proj", kv_dim, dim, c),
            out_proj: nn::linear(&p / "out_proj", dim, dim, c),
            num_heads,
        }
    }

    /// Self-attention: `xs: [B, T, D]` → `[B, T, D]`; `causal` masks
    /// attention to later tokens.
    pub fn forward(&self, xs: &Tensor, causal: bool) -> Tensor {
        self.attend(xs, xs, causal)
    }

    /// `xs: [B, T, D]` attends to `ctx: [B, S, kv_dim]` → `[B, T, D]`.
    pub fn attend(&self, xs: &Tensor, ctx: &Tensor, causal: bool) -> Tensor {
        let (b, t, d) = xs.size3().expect("attention queries must be [B, T, D]");
        let heads = |x: Tensor| {
            x.view([b, -1, self.num_heads, d / self.num_heads])
                .transpose(1, 2)
        };
        let q = heads(self.q_proj.forward(xs)); // [B, H, T, D/H]
        let k = heads(self.k_proj.forward(ctx)); // [B, H, S, D/H]
        let v = heads(self.v_proj.forward(ctx));
        // Default scale 1/√(D/H), as CLIP.
        let ys = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            causal,
            None,
            false,
        );
        self.out_proj
            .forward(&ys.transpose(1, 2).contiguous().view([b, t, d])) // [B, T, D]
    }
}

/// The two-layer MLP with QuickGELU (`fc1`, `fc2`).
#[derive(Debug)]
pub struct Mlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
    act: Activation,
}

impl Mlp {
    /// Builds `fc1: dim → hidden` and `fc2: hidden → dim` under `p`.
    pub fn new(p: nn::Path, dim: i64, hidden: i64, act: Activation) -> Self {
        let c = nn::LinearConfig::default();
        Self {
            fc1: nn::linear(&p / "fc1", dim, hidden, c),
            fc2: nn::linear(&p / "fc2", hidden, dim, c),
            act,
        }
    }

    /// `[.., D]` → `[.., D]`.
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        self.fc2.forward(&self.act.apply(&self.fc1.forward(xs)))
    }
}

/// One pre-LN residual block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Debug)]
pub struct EncoderLayer {
    layer_norm1: nn::LayerNorm,
    self_attn: Attention,
    layer_norm2: nn::LayerNorm,
    mlp: Mlp,
}

impl EncoderLayer {
    /// Builds the block under `p` with HF's sub-paths.
    pub fn new(p: nn::Path, dim: i64, heads: i64, hidden: i64, eps: f64, act: Activation) -> Self {
        let ln = nn::LayerNormConfig {
            eps,
            ..Default::default()
        };
        Self {
            layer_norm1: nn::layer_norm(&p / "layer_norm1", vec![dim], ln),
            self_attn: Attention::new(&p / "self_attn", dim, heads),
            layer_norm2: nn::layer_norm(&p / "layer_norm2", vec![dim], ln),
            mlp: Mlp::new(&p / "mlp", dim, hidden, act),
        }
    }

    /// `[B, T, D]` → `[B, T, D]`.
    pub fn forward(&self, xs: &Tensor, causal: bool) -> Tensor {
        let xs = xs
            + self
                .self_attn
                .forward(&self.layer_norm1.forward(xs), causal);
        &xs + self.mlp.forward(&self.layer_norm2.forward(&xs))
    }
}

/// A stack of [`EncoderLayer`]s at `layers.{i}`.
#[derive(Debug)]
pub struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    /// Builds `n_layers` CLIP blocks (QuickGELU) under `p / "layers" / i`.
    pub fn new(p: nn::Path, n_layers: i64, dim: i64, heads: i64, hidden: i64, eps: f64) -> Self {
        let layers = (0..n_layers)
            .map(|i| {
                EncoderLayer::new(
                    &p / "layers" / i,
                    dim,
                    heads,
                    hidden,
                    eps,
                    Activation::QuickGelu,
                )
            })
            .collect();
        Self { layers }
    }

    /// `[B, T, D]` → `[B, T, D]`.
    pub fn forward(&self, xs: &Tensor, causal: bool) -> Tensor {
        let mut xs = xs.shallow_clone();
        for layer in &self.layers {
            xs = layer.forward(&xs, causal);
        }
        xs
    }
}
