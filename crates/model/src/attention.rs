//! The pre-LN transformer shared by both encoders.
//!
//! Mirrors `CLIPAttention`, `CLIPMLP`, `CLIPEncoderLayer` and `CLIPEncoder` in
//! `transformers/models/clip/modeling_clip.py` (transformers 5.24); variable
//! paths are the HF weight names below `encoder`.

use tch::Tensor;
use tch::nn::{self, Module};

use crate::cast;

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

/// The query, key and value projections of an [`Attention`].
#[derive(Debug)]
enum Projections {
    /// Self-attention: one `[3·D, D]` matrix and `[3·D]` bias (`qkv_proj`),
    /// the q, k and v rows stacked in that order, so the three come from one
    /// matmul (a launch-bound step pays per operator, not per FLOP).
    Fused(nn::Linear),
    /// Cross-attention: queries from the tokens, keys and values from a
    /// context of another width; kept as HF's three layers.
    Separate {
        q_proj: nn::Linear,
        k_proj: nn::Linear,
        v_proj: nn::Linear,
    },
}

/// Multi-head attention. As self-attention ([`Attention::new`]) keys and
/// values come from the queries' tokens, and q, k and v are one fused
/// projection (`qkv_proj`; [`crate::load`] converts to and from HF's
/// `q_proj`/`k_proj`/`v_proj`). As cross-attention ([`Attention::cross`])
/// they come from another sequence, possibly of another width, through
/// separate `q_proj`, `k_proj`, `v_proj`.
#[derive(Debug)]
pub struct Attention {
    proj: Projections,
    out_proj: nn::Linear,
    num_heads: i64,
}

/// Name of the fused self-attention projection under an attention's path.
pub const QKV_PROJ: &str = "qkv_proj";

impl Attention {
    /// Self-attention under `p` (`qkv_proj`, `out_proj`).
    ///
    /// Each `D × D` block of `qkv_proj` (and its bias) is drawn as its own
    /// `nn::linear(dim, dim)` would be, in the order q, k, v with each bias
    /// before its weight, so the initial weights equal those of three
    /// separate layers bit for bit and the random stream after them is
    /// unchanged.
    pub fn new(p: nn::Path, dim: i64, num_heads: i64) -> Self {
        check_heads(dim, num_heads);
        let c = nn::LinearConfig::default();
        let (device, kind) = (p.device(), p.kind());
        let bound = 1.0 / (dim as f64).sqrt();
        let (mut ws, mut bs) = (Vec::with_capacity(3), Vec::with_capacity(3));
        for _ in 0..3 {
            let b = nn::Init::Uniform {
                lo: -bound,
                up: bound,
            };
            bs.push(nn::f_init(b, &[dim], device, kind).expect("initialising qkv_proj.bias"));
            ws.push(
                nn::f_init(c.ws_init, &[dim, dim], device, kind)
                    .expect("initialising qkv_proj.weight"),
            );
        }
        let qkv = &p / QKV_PROJ;
        let qkv_proj = nn::Linear {
            ws: qkv.var_copy("weight", &Tensor::cat(&ws, 0)), // [3D, D]
            bs: Some(qkv.var_copy("bias", &Tensor::cat(&bs, 0))), // [3D]
        };
        Self {
            proj: Projections::Fused(qkv_proj),
            out_proj: nn::linear(&p / "out_proj", dim, dim, c),
            num_heads,
        }
    }

    /// Cross-attention under `p`: queries `dim` wide, keys and values
    /// projected from `kv_dim`-wide context tokens (`q_proj`, `k_proj`,
    /// `v_proj`, `out_proj`).
    pub fn cross(p: nn::Path, dim: i64, kv_dim: i64, num_heads: i64) -> Self {
        check_heads(dim, num_heads);
        let c = nn::LinearConfig::default();
        Self {
            proj: Projections::Separate {
                q_proj: nn::linear(&p / "q_proj", dim, dim, c),
                k_proj: nn::linear(&p / "k_proj", kv_dim, dim, c),
                v_proj: nn::linear(&p / "v_proj", kv_dim, dim, c),
            },
            out_proj: nn::linear(&p / "out_proj", dim, dim, c),
            num_heads,
        }
    }

    /// Self-attention: `xs: [B, T, D]` → `[B, T, D]`; `causal` masks
    /// attention to later tokens.
    pub fn forward(&self, xs: &Tensor, causal: bool) -> Tensor {
        let Projections::Fused(qkv_proj) = &self.proj else {
            return self.attend(xs, xs, causal);
        };
        let (b, t, d) = xs.size3().expect("attention queries must be [B, T, D]");
        let qkv = cast::linear(qkv_proj, xs) // [B, T, 3D]
            .view([b, t, 3, self.num_heads, d / self.num_heads])
            .permute([2, 0, 3, 1, 4]); // [3, B, H, T, D/H]
        let qkv = qkv.unbind(0);
        self.heads_attend(&qkv[0], &qkv[1], &qkv[2], causal, (b, t, d))
    }

    /// `xs: [B, T, D]` attends to `ctx: [B, S, kv_dim]` → `[B, T, D]`.
    pub fn attend(&self, xs: &Tensor, ctx: &Tensor, causal: bool) -> Tensor {
        let (b, t, d) = xs.size3().expect("attention queries must be [B, T, D]");
        let heads = |x: Tensor| {
            x.view([b, -1, self.num_heads, d / self.num_heads])
                .transpose(1, 2)
        };
        let (q, k, v) = match &self.proj {
            Projections::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => (
                cast::linear(q_proj, xs),
                cast::linear(k_proj, ctx),
                cast::linear(v_proj, ctx),
            ),
            // A self-attention layer given another context: its q rows on
            // the tokens, its k and v rows on the context.
            Projections::Fused(qkv) => {
                let ws = cast::weight(&qkv.ws);
                let bs = cast::weight(qkv.bs.as_ref().expect("qkv_proj has a bias"));
                let q = xs.linear(&ws.narrow(0, 0, d), Some(bs.narrow(0, 0, d)));
                let kv = ctx
                    .linear(&ws.narrow(0, d, 2 * d), Some(bs.narrow(0, d, 2 * d)))
                    .chunk(2, -1);
                (q, kv[0].shallow_clone(), kv[1].shallow_clone())
            }
        };
        // [B, H, T, D/H] queries; [B, H, S, D/H] keys and values.
        self.heads_attend(&heads(q), &heads(k), &heads(v), causal, (b, t, d))
    }

    /// Scaled dot-product attention over per-head q, k, v, then `out_proj`.
    fn heads_attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        causal: bool,
        (b, t, d): (i64, i64, i64),
    ) -> Tensor {
        // Default scale 1/√(D/H), as CLIP.
        let ys =
            Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, causal, None, false);
        let ys = ys.transpose(1, 2).contiguous().view([b, t, d]);
        cast::linear(&self.out_proj, &ys) // [B, T, D]
    }
}

fn check_heads(dim: i64, num_heads: i64) {
    assert_eq!(
        dim % num_heads,
        0,
        "width {dim} is not a multiple of {num_heads} heads"
    );
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
        cast::linear(&self.fc2, &self.act.apply(&cast::linear(&self.fc1, xs)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Separate q/k/v layers (built as cross-attention over the same width)
    /// and a fused self-attention holding the same weights stacked.
    fn separate_and_fused(
        dim: i64,
        heads: i64,
    ) -> (nn::VarStore, Attention, nn::VarStore, Attention) {
        tch::manual_seed(11);
        let (vs_sep, vs_fused) = (
            nn::VarStore::new(Device::Cpu),
            nn::VarStore::new(Device::Cpu),
        );
        let sep = Attention::cross(vs_sep.root() / "attn", dim, dim, heads);
        let fused = Attention::new(vs_fused.root() / "attn", dim, heads);
        let sep_vars = vs_sep.variables();
        let mut fused_vars = vs_fused.variables();
        tch::no_grad(|| {
            for s in ["weight", "bias"] {
                let parts: Vec<Tensor> = ["q_proj", "k_proj", "v_proj"]
                    .iter()
                    .map(|p| sep_vars[&format!("attn.{p}.{s}")].shallow_clone())
                    .collect();
                let fused_var = fused_vars.get_mut(&format!("attn.qkv_proj.{s}")).unwrap();
                fused_var.copy_(&Tensor::cat(&parts, 0));
                let out = fused_vars.get_mut(&format!("attn.out_proj.{s}")).unwrap();
                out.copy_(&sep_vars[&format!("attn.out_proj.{s}")]);
            }
        });
        (vs_sep, sep, vs_fused, fused)
    }

    #[test]
    fn fused_self_attention_equals_separate_projections() {
        let (_vs_sep, sep, _vs_fused, fused) = separate_and_fused(24, 4);
        let xs = Tensor::randn([3, 7, 24], (Kind::Float, Device::Cpu));
        let ctx = Tensor::randn([3, 5, 24], (Kind::Float, Device::Cpu));
        for causal in [false, true] {
            let d = (sep.forward(&xs, causal) - fused.forward(&xs, causal))
                .abs()
                .max()
                .double_value(&[]);
            assert!(d <= 1e-6, "causal {causal}: fused differs by {d}");
        }
        // A fused layer given another context projects it with its k, v rows.
        let d = (sep.attend(&xs, &ctx, false) - fused.attend(&xs, &ctx, false))
            .abs()
            .max()
            .double_value(&[]);
        assert!(d <= 1e-6, "attend: fused differs by {d}");
    }

    #[test]
    fn fused_gradients_are_the_stacked_separate_ones() {
        let (vs_sep, sep, vs_fused, fused) = separate_and_fused(16, 2);
        let xs = Tensor::randn([2, 6, 16], (Kind::Float, Device::Cpu));
        sep.forward(&xs, true).square().sum(Kind::Float).backward();
        fused
            .forward(&xs, true)
            .square()
            .sum(Kind::Float)
            .backward();
        let (sep_vars, fused_vars) = (vs_sep.variables(), vs_fused.variables());
        for s in ["weight", "bias"] {
            let parts: Vec<Tensor> = ["q_proj", "k_proj", "v_proj"]
                .iter()
                .map(|p| sep_vars[&format!("attn.{p}.{s}")].grad())
                .collect();
            let want = Tensor::cat(&parts, 0);
            let scale = want.abs().max().double_value(&[]);
            let d = (&want - fused_vars[&format!("attn.qkv_proj.{s}")].grad())
                .abs()
                .max()
                .double_value(&[]);
            assert!(
                d <= 1e-6 * scale,
                "{s}: gradients differ by {d} (largest {scale})"
            );
        }
    }

    #[test]
    fn fused_initialisation_draws_what_three_linear_layers_draw() {
        let (dim, c) = (12, nn::LinearConfig::default());
        // torch's generator is shared with the tests running beside this
        // one: a draw of theirs between the two seedings changes one side.
        // So a few tries; a wrong initialisation fails every one of them.
        let same = (0..8).any(|_| {
            tch::manual_seed(5);
            let vs = nn::VarStore::new(Device::Cpu);
            let layers: Vec<nn::Linear> = ["q_proj", "k_proj", "v_proj", "out_proj"]
                .iter()
                .map(|n| nn::linear(vs.root() / *n, dim, dim, c))
                .collect();
            tch::manual_seed(5);
            let vs_fused = nn::VarStore::new(Device::Cpu);
            let _attn = Attention::new(vs_fused.root(), dim, 3);
            let vars = vs_fused.variables();
            assert_eq!(vars["qkv_proj.weight"].size(), vec![3 * dim, dim]);
            let ws: Vec<&Tensor> = layers[..3].iter().map(|l| &l.ws).collect();
            let bs: Vec<&Tensor> = layers[..3].iter().map(|l| l.bs.as_ref().unwrap()).collect();
            vars["qkv_proj.weight"].equal(&Tensor::cat(&ws, 0))
                && vars["qkv_proj.bias"].equal(&Tensor::cat(&bs, 0))
                // The stream after them is unchanged too.
                && vars["out_proj.weight"].equal(&layers[3].ws)
        });
        assert!(
            same,
            "the fused layer draws other initial weights than three Linears"
        );
    }
}
