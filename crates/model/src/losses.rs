//! Loss functions, small and pure.

use tch::{Kind, Reduction, Tensor};

/// Loss_align: symmetric InfoNCE between pooled image and report embeddings
/// (CLIP's loss). `image, text: [B, C]`, row i of each a positive pair;
/// `logit_scale` is the learnable log temperature, applied as `exp`.
/// Embeddings are L2-normalised here.
pub fn clip_loss(image: &Tensor, text: &Tensor, logit_scale: &Tensor) -> Tensor {
    let normalise = |x: &Tensor| x / x.norm_scalaropt_dim(2, [-1i64].as_slice(), true);
    let logits = normalise(image).matmul(&normalise(text).tr()) * logit_scale.exp(); // [B, B]
    let targets = Tensor::arange(logits.size()[0], (Kind::Int64, logits.device()));
    let per_image = logits.cross_entropy_loss::<Tensor>(&targets, None, Reduction::Mean, -100, 0.0);
    let per_text =
        logits
            .tr()
            .cross_entropy_loss::<Tensor>(&targets, None, Reduction::Mean, -100, 0.0);
    (per_image + per_text) / 2.0
}

/// Loss_MIM (MAE's `forward_loss`): mean squared error over masked patches
/// only. `target, pred: [B, N, P]` (target from [`crate::mim::patchify`]),
/// `mask: [B, N]` with 1 = masked. With `norm_pix`, each target patch is
/// normalised by its own mean and variance (eps 1e-6), as MAE's default.
pub fn mim_loss(target: &Tensor, pred: &Tensor, mask: &Tensor, norm_pix: bool) -> Tensor {
    let target = if norm_pix {
        let mean = target.mean_dim([-1i64].as_slice(), true, Kind::Float);
        // Unbiased variance, as torch's `.var(dim=-1)` in MAE.
        let var = target.var_dim([-1i64].as_slice(), true, true);
        (target - mean) / (var + 1e-6).sqrt()
    } else {
        target.shallow_clone()
    };
    let per_patch = (pred - target)
        .square()
        .mean_dim([-1i64].as_slice(), false, Kind::Float); // [B, N]
    (per_patch * mask).sum(Kind::Float) / mask.sum(Kind::Float)
}

/// Loss_MLM: −log P(y_t | y_<t, x) at the positions EntMLM selected.
/// `logits: [B·K, V]` are the decoder's at the `slots` of `input_ids: [B,
/// L]` ([`crate::ent_mlm::TextDecoder::forward_selected`]); the targets are
/// the tokens there (a selected position reads the mask embedding, so it
/// predicts its own token from the earlier ones and the image); slots that
/// hold no selected position count nothing. The sum is divided by
/// `divisor` (a scalar on the device): the count of selected positions for
/// their mean, or, in a data-parallel step, the mean count per rank, so
/// that the ranks' mean is the global batch's mean. A divisor below 1 (no
/// position selected) counts as 1: the loss is then 0.
pub fn mlm_loss(
    logits: &Tensor,
    input_ids: &Tensor,
    slots: &crate::ent_mlm::Slots,
    divisor: &Tensor,
) -> Tensor {
    let targets = input_ids
        .gather(1, &slots.index, false)
        .masked_fill(&slots.mask.logical_not(), IGNORED)
        .reshape([-1]); // [B·K]
    let sum = logits.cross_entropy_loss::<Tensor>(&targets, None, Reduction::Sum, IGNORED, 0.0);
    sum / divisor.to_kind(Kind::Float).clamp_min(1.0)
}

/// The target of a slot that holds no selected position.
const IGNORED: i64 = -100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_loss_matches_hand_computed_two_pair_case() {
        // Normalised: image = [[1, 0], [0, 1]], both texts = [1, 0]; scale e^0 = 1.
        let image = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 2.0]).view([2, 2]);
        let text = Tensor::from_slice(&[3.0f32, 0.0, 1.0, 0.0]).view([2, 2]);
        let scale = Tensor::from(0.0f32);
        // logits = [[1, 1], [0, 0]].
        // image→text rows: row0 CE = ln(e+e) - 1 = ln 2; row1 CE = ln 2.
        // text→image (columns): col0 = [1, 0] target 0: ln(e+1) - 1;
        //                        col1 = [1, 0] target 1: ln(e+1) - 0.
        let e = std::f64::consts::E;
        let expected = (2f64.ln() + ((e + 1.0).ln() - 1.0 + (e + 1.0).ln()) / 2.0) / 2.0;
        let got = clip_loss(&image, &text, &scale).double_value(&[]);
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
    }

    #[test]
    fn mim_loss_averages_masked_patches_only() {
        // Two patches of two pixels; only patch 1 is masked.
        let target = Tensor::from_slice(&[0.0f32, 0.0, 1.0, 3.0]).view([1, 2, 2]);
        let pred = Tensor::from_slice(&[9.0f32, 9.0, 0.0, 0.0]).view([1, 2, 2]);
        let mask = Tensor::from_slice(&[0.0f32, 1.0]).view([1, 2]);
        // Raw: ((0-1)² + (0-3)²)/2 = 5.
        assert!((mim_loss(&target, &pred, &mask, false).double_value(&[]) - 5.0).abs() < 1e-6);
        // Normalised: mean 2, unbiased var 2 → targets ∓1/√(2+1e-6); loss = 1/(2+1e-6).
        let want = 1.0 / (2.0 + 1e-6);
        assert!((mim_loss(&target, &pred, &mask, true).double_value(&[]) - want).abs() < 1e-6);
    }

    #[test]
    fn mlm_loss_scores_the_selected_tokens() {
        use crate::ent_mlm::slots;
        // Positions 0 and 2 of one report are selected, both token 1; two
        // slots. Their logits over V = 2: [0, ln 3] → P = 3/4; [ln 3, 0] → P = 1/4.
        let ids = Tensor::from_slice(&[1i64, 0, 1]).view([1, 3]);
        let selected = Tensor::from_slice(&[true, false, true]).view([1, 3]);
        let logits = Tensor::from_slice(&[0.0f32, 3f32.ln(), 3f32.ln(), 0.0]).view([2, 2]);
        let sum = -(0.75f64.ln() + 0.25f64.ln());
        let two = Tensor::from(2.0f32);
        let mean = mlm_loss(&logits, &ids, &slots(&selected, 2), &two).double_value(&[]);
        assert!((mean - sum / 2.0).abs() < 1e-6, "{mean}");
        // Token 0 at position 1 is not a target: selecting it instead of
        // position 2 changes the loss.
        let other = Tensor::from_slice(&[true, true, false]).view([1, 3]);
        let changed = mlm_loss(&logits, &ids, &slots(&other, 2), &two).double_value(&[]);
        assert!((changed - sum / 2.0).abs() > 0.1, "{changed}");
        // A slot without a selected position counts nothing.
        let one = Tensor::from_slice(&[true, false, false]).view([1, 3]);
        let first = mlm_loss(&logits, &ids, &slots(&one, 2), &Tensor::from(1.0f32));
        assert!((first.double_value(&[]) + 0.75f64.ln()).abs() < 1e-6);
        // A data-parallel rank divides its sum by the mean count per rank.
        let four = Tensor::from(4.0f32);
        let shared = mlm_loss(&logits, &ids, &slots(&selected, 2), &four).double_value(&[]);
        assert!((shared - sum / 4.0).abs() < 1e-6, "{shared}");
        // Nothing selected: 0, not NaN.
        let none = Tensor::from_slice(&[false, false, false]).view([1, 3]);
        let zero = mlm_loss(&logits, &ids, &slots(&none, 2), &Tensor::from(0.0f32));
        assert_eq!(zero.double_value(&[]), 0.0);
    }

    #[test]
    fn clip_loss_uses_exp_of_logit_scale() {
        let image = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        // Perfectly matched pairs: logits = s·I; loss = ln(1 + e^{-s}).
        let s = 2.0f64;
        let got = clip_loss(&image, &image, &Tensor::from(s.ln() as f32)).double_value(&[]);
        assert!((got - (1.0 + (-s).exp()).ln()).abs() < 1e-6, "{got}");
    }
}
