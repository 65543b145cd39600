//! The MAE-style pixel decoder of AttMIM (METHOD.md, AttMIM step 5).
//!
//! Mirrors `MaskedAutoencoderViT.forward_decoder` and `patchify` in
//! facebookresearch/mae `models_mae.py` (and `util/pos_embed.py` for the
//! fixed 2-D sin-cos positions). The blocks are this crate's pre-LN
//! [`EncoderLayer`] with exact GELU and LayerNorm eps 1e-6, as MAE's timm
//! `Block`, but with separate q/k/v projections instead of a fused `qkv`.

use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::{self, Module};

use crate::attention::{Activation, EncoderLayer};
use crate::cast;
use crate::config::VisionConfig;

/// Decoder settings a user chooses. `Default` is the paper's: 8 layers,
/// width 512, 16 heads. Its input width and the patch grid follow from the
/// encoder ([`MimDecoderDims`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MimDecoderConfig {
    /// Decoder width.
    pub hidden_size: i64,
    /// Decoder layers.
    pub num_layers: i64,
    /// Decoder attention heads.
    pub num_heads: i64,
    /// MLP width as a multiple of `hidden_size` (MAE: 4).
    pub mlp_ratio: i64,
}

impl Default for MimDecoderConfig {
    fn default() -> Self {
        Self {
            hidden_size: 512,
            num_layers: 8,
            num_heads: 16,
            mlp_ratio: 4,
        }
    }
}

impl MimDecoderConfig {
    /// A tiny decoder for tests: 1 layer of width 16, 2 heads.
    pub fn tiny() -> Self {
        Self {
            hidden_size: 16,
            num_layers: 1,
            num_heads: 2,
            mlp_ratio: 2,
        }
    }
}

/// The decoder's sizes that the encoder fixes: what it reads and the
/// patches it predicts. [`crate::MmclipConfig::mim_decoder_dims`] derives
/// them from the model's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MimDecoderDims {
    /// Width of the encoder tokens fed in (768: ViT-B hidden size in
    /// "input" mode; 512 = C for "feature" mode).
    pub in_dim: i64,
    /// Patches per side of the image grid (224/16 = 14).
    pub grid_size: i64,
    /// Patch side in pixels (16).
    pub patch_size: i64,
    /// Image channels (3).
    pub num_channels: i64,
}

impl MimDecoderDims {
    /// The patches of `vision`'s images, read from tokens of width `in_dim`.
    pub fn of(vision: &VisionConfig, in_dim: i64) -> Self {
        Self {
            in_dim,
            grid_size: vision.image_size / vision.patch_size,
            patch_size: vision.patch_size,
            num_channels: vision.num_channels,
        }
    }
}

/// MAE's `get_2d_sincos_pos_embed(dim, grid, cls_token=True)`: `[1 + G², dim]`,
/// row 0 (class token) zeros; the first half of each row encodes the column
/// (w), the second half the row (h), as MAE's `meshgrid(w, h)` does.
pub fn sincos_2d_pos_embed(dim: i64, grid: i64) -> Tensor {
    assert_eq!(
        dim % 4,
        0,
        "sin-cos positions need a width divisible by 4, got {dim}"
    );
    let quarter = (dim / 4) as usize;
    let omega: Vec<f64> = (0..quarter)
        .map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64))
        .collect();
    let mut out = vec![0f32; ((1 + grid * grid) * dim) as usize];
    for k in 0..grid * grid {
        let row = &mut out[((1 + k) * dim) as usize..((2 + k) * dim) as usize];
        for (half, pos) in [(0, k % grid), (1, k / grid)] {
            let base = half * 2 * quarter;
            for (i, w) in omega.iter().enumerate() {
                row[base + i] = (pos as f64 * w).sin() as f32;
                row[base + quarter + i] = (pos as f64 * w).cos() as f32;
            }
        }
    }
    Tensor::from_slice(&out).view([1 + grid * grid, dim])
}

/// `imgs: [B, 3, H, W]` → `[B, N, p²·3]`, MAE's `patchify` (pixel order p, q, c).
pub fn patchify(imgs: &Tensor, patch: i64) -> Tensor {
    let (b, c, h, w) = imgs.size4().expect("images must be [B, C, H, W]");
    let (gh, gw) = (h / patch, w / patch);
    imgs.reshape([b, c, gh, patch, gw, patch])
        .permute([0, 2, 4, 3, 5, 1]) // nchpwq -> nhwpqc
        .reshape([b, gh * gw, patch * patch * c])
}

/// The decoder: embed, mask tokens, un-shuffle, fixed positions, blocks, pixels.
#[derive(Debug)]
pub struct MimDecoder {
    decoder_embed: nn::Linear,
    mask_token: Tensor,
    decoder_pos_embed: Tensor,
    decoder_blocks: Vec<EncoderLayer>,
    decoder_norm: nn::LayerNorm,
    decoder_pred: nn::Linear,
}

impl MimDecoder {
    /// Builds the decoder under `p` with MAE's names.
    pub fn new(p: nn::Path, cfg: &MimDecoderConfig, dims: MimDecoderDims) -> Self {
        let d = cfg.hidden_size;
        let lin = nn::LinearConfig::default();
        let n = dims.grid_size * dims.grid_size;
        let mut pos = p.zeros_no_train("decoder_pos_embed", &[1 + n, d]);
        tch::no_grad(|| pos.copy_(&sincos_2d_pos_embed(d, dims.grid_size).to_device(p.device())));
        let blocks = &p / "decoder_blocks";
        Self {
            decoder_embed: nn::linear(&p / "decoder_embed", dims.in_dim, d, lin),
            mask_token: p.randn("mask_token", &[d], 0.0, 0.02),
            decoder_pos_embed: pos,
            decoder_blocks: (0..cfg.num_layers)
                .map(|i| {
                    EncoderLayer::new(
                        &blocks / i,
                        d,
                        cfg.num_heads,
                        cfg.mlp_ratio * d,
                        1e-6,
                        Activation::Gelu,
                    )
                })
                .collect(),
            decoder_norm: nn::layer_norm(
                &p / "decoder_norm",
                vec![d],
                nn::LayerNormConfig {
                    eps: 1e-6,
                    ..Default::default()
                },
            ),
            decoder_pred: nn::linear(
                &p / "decoder_pred",
                d,
                dims.patch_size * dims.patch_size * dims.num_channels,
                lin,
            ),
        }
    }

    /// `latent: [B, 1 + K, in_dim]` (class token first, then the visible
    /// patches in `ids_keep` order), `ids_restore: [B, N]` →
    /// predicted pixels `[B, N, p²·3]` in patch order.
    pub fn forward(&self, latent: &Tensor, ids_restore: &Tensor) -> Tensor {
        let xs = cast::linear(&self.decoder_embed, latent); // [B, 1 + K, D]
        let (b, t, d) = xs.size3().expect("latent must be [B, 1 + K, D]");
        let n = ids_restore.size()[1];
        let masked = self
            .mask_token
            .view([1, 1, d])
            .expand([b, n + 1 - t, d], false);
        let shuffled = Tensor::cat(&[xs.narrow(1, 1, t - 1), masked], 1); // [B, N, D]
        let index = ids_restore.unsqueeze(-1).expand([b, n, d], false);
        let patches = shuffled.gather(1, &index, false); // un-shuffled, [B, N, D]
        let mut xs = Tensor::cat(&[xs.narrow(1, 0, 1), patches], 1) + &self.decoder_pos_embed; // [B, 1 + N, D]
        for block in &self.decoder_blocks {
            xs = block.forward(&xs, false);
        }
        let xs = cast::linear(&self.decoder_pred, &self.decoder_norm.forward(&xs));
        xs.narrow(1, 1, n) // [B, N, p²·3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn sincos_positions_match_mae_values() {
        // MAE get_2d_sincos_pos_embed(8, 2, cls_token=True), computed by hand:
        // omega = [1, 1/100]; patch k=3 is (h=1, w=1).
        let pe = sincos_2d_pos_embed(8, 2);
        assert_eq!(pe.size(), vec![5, 8]);
        assert_eq!(pe.get(0).abs().sum(Kind::Float).double_value(&[]), 0.0);
        let want = [1f64.sin(), 0.01f64.sin(), 1f64.cos(), 0.01f64.cos()];
        for half in 0..2 {
            for (i, v) in want.iter().enumerate() {
                assert!((pe.double_value(&[4, half * 4 + i as i64]) - v).abs() < 1e-6);
            }
        }
        // Patch k=1 is (h=0, w=1): first half from w=1, second from h=0 (sin 0, cos 0).
        assert!((pe.double_value(&[2, 0]) - 1f64.sin()).abs() < 1e-6);
        assert_eq!(pe.double_value(&[2, 4]), 0.0);
        assert_eq!(pe.double_value(&[2, 6]), 1.0);
    }

    #[test]
    fn patchify_orders_pixels_like_mae() {
        let imgs = Tensor::arange(2 * 3 * 4 * 4, (Kind::Float, Device::Cpu)).view([2, 3, 4, 4]);
        let p = patchify(&imgs, 2);
        assert_eq!(p.size(), vec![2, 4, 12]);
        // Patch 1 (row 0, col 1), pixel (0, 1), channel 2: imgs[0, 2, 0, 3].
        let idx = 3 + 2; // (p·2 + q)·3 + c with p = 0, q = 1, c = 2
        assert_eq!(
            p.double_value(&[0, 1, idx]),
            imgs.double_value(&[0, 2, 0, 3])
        );
    }

    #[test]
    fn decoder_predicts_every_patch_with_fixed_positions() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = MimDecoderConfig::tiny();
        let dims = MimDecoderDims::of(&VisionConfig::tiny(), 32);
        assert_eq!((dims.grid_size, dims.patch_size), (4, 8));
        let dec = MimDecoder::new(vs.root() / "decoder", &cfg, dims);
        tch::manual_seed(0);
        let latent = Tensor::randn([2, 1 + 4, dims.in_dim], (Kind::Float, Device::Cpu));
        let noise = crate::att_mim::mask_noise(2, 16, 1, Device::Cpu);
        let sel = crate::att_mim::select_mask(&noise.lt(0.0), &noise, 0.75);
        let pred = dec.forward(&latent, &sel.ids_restore);
        assert_eq!(pred.size(), vec![2, 16, 8 * 8 * 3]);
        // The fixed positions are not trained.
        assert!(
            !vs.trainable_variables()
                .iter()
                .any(|t| t.size() == vec![17, cfg.hidden_size])
        );
    }
}
