//! AttMIM mask selection (METHOD.md, "AttMIM"; paper §3.2).
//!
//! Pure functions on projected features, run without gradient. The result
//! has the shape of MAE's `random_masking` (`models_mae.py`): `ids_keep`
//! for the encoder, a 0/1 `mask`, and `ids_restore` for the decoder. The
//! randomness comes in as a `noise` tensor, so a seed fixes the mask
//! ([`mask_noise`]).

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Which attention maps propose patches (the paper's ablations, Table 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskStrategy {
    /// No map: uniform random masking, as MAE.
    Random,
    /// M(A_r) only (image → report); unpaired rows fall back to random.
    ImageReport,
    /// M(A_p) only (image → disease prompts).
    PromptDriven,
    /// M(A_i) only (image self-attention).
    ImageSelf,
    /// The union M(A_r) ∪ M(A_p) ∪ M(A_i); unpaired rows drop M(A_r).
    AttMim,
}

/// How a patch's row of an attention map becomes its score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatchScore {
    /// L2 norm of the row (the default).
    Norm,
    /// Mean of the row.
    Mean,
}

/// AttMIM settings. `Default` is the paper's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AttMimConfig {
    /// λ1: each map marks its top ⌈λ1·N⌉ patches (0.7).
    pub lambda1: f64,
    /// λ2: fraction of all patches finally masked (0.75).
    pub lambda2: f64,
    /// Row score of an attention map.
    pub score: PatchScore,
    /// Which maps take part.
    pub strategy: MaskStrategy,
}

impl Default for AttMimConfig {
    fn default() -> Self {
        Self {
            lambda1: 0.7,
            lambda2: 0.75,
            score: PatchScore::Norm,
            strategy: MaskStrategy::AttMim,
        }
    }
}

impl AttMimConfig {
    /// The first setting out of range, named as in a config's `att_mim`
    /// table: λ1 in [0, 1] (0: no candidates), λ2 in [0, 1) (some patch
    /// must stay visible).
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.lambda1) {
            return Err(format!("att_mim.lambda1 {} is not in [0, 1]", self.lambda1));
        }
        if !(0.0..1.0).contains(&self.lambda2) {
            return Err(format!("att_mim.lambda2 {} is not in [0, 1)", self.lambda2));
        }
        Ok(())
    }
}

/// A mask in MAE's layout. N patches, `N_keep = N − round(λ2·N)` visible.
#[derive(Debug)]
pub struct MaskSelection {
    /// Visible patch indices, `[B, N_keep]` int64 (encoder input order).
    pub ids_keep: Tensor,
    /// 1 = masked, 0 = visible, `[B, N]` float, in patch order.
    pub mask: Tensor,
    /// Inverse permutation that un-shuffles `[keep ‖ masked]`, `[B, N]` int64.
    pub ids_restore: Tensor,
}

/// A = softmax(E_img E_ctxᵀ / √d_k) · E_ctx, d_k = C (the three attention
/// maps of step 1). `e_img: [B, N, C]`, `e_ctx: [B, M, C]`, `ctx_valid`:
/// optional `[B, M]` bool of real (non-padding) context tokens.
/// Returns `[B, N, C]`.
pub fn attention_map(e_img: &Tensor, e_ctx: &Tensor, ctx_valid: Option<&Tensor>) -> Tensor {
    let c = *e_img.size().last().expect("e_img must be [B, N, C]");
    let mut logits = e_img.matmul(&e_ctx.transpose(1, 2)) / (c as f64).sqrt(); // [B, N, M]
    if let Some(valid) = ctx_valid {
        logits = logits.masked_fill(&valid.logical_not().unsqueeze(1), f64::NEG_INFINITY);
    }
    logits
        .softmax(-1, Kind::Float)
        .matmul(&e_ctx.to_kind(Kind::Float)) // [B, N, C]
}

/// Score of each patch from its row of an attention map: `[B, N, C]` → `[B, N]`.
pub fn patch_scores(a: &Tensor, score: PatchScore) -> Tensor {
    match score {
        PatchScore::Norm => a.norm_scalaropt_dim(2, [-1i64].as_slice(), false),
        PatchScore::Mean => a.mean_dim([-1i64].as_slice(), false, Kind::Float),
    }
}

/// ⌈x·n⌉ and ⌊x·n⌋ without float noise turning 0.7·10 into 8 or 0.29·100 into 28.
fn ceil_frac(x: f64, n: i64) -> i64 {
    ((x * n as f64) - 1e-9).ceil().clamp(0.0, n as f64) as i64
}
fn round_frac(x: f64, n: i64) -> i64 {
    (x * n as f64).round().clamp(0.0, n as f64) as i64
}

/// M(A, λ1): marks the top ⌈λ1·N⌉ patches of each row. `[B, N]` → `[B, N]` bool.
pub fn top_mask(scores: &Tensor, lambda1: f64) -> Tensor {
    let (b, n) = scores.size2().expect("scores must be [B, N]");
    let k = ceil_frac(lambda1, n);
    let marks = Tensor::zeros([b, n], (Kind::Float, scores.device()));
    if k == 0 {
        return marks.to_kind(Kind::Bool);
    }
    let (_, idx) = scores.topk(k, -1, true, false);
    marks.scatter_value(1, &idx, 1.0).to_kind(Kind::Bool)
}

/// Inputs of the candidate set M_b for one batch.
#[derive(Debug)]
pub struct MaskInputs<'a> {
    /// E_img, projected patch tokens `[B, N, C]`.
    pub e_img: &'a Tensor,
    /// E_report, projected report tokens `[B, L, C]`, and `[B, L]` bool of
    /// real tokens; `None` when no row of the batch has a report.
    pub e_report: Option<(&'a Tensor, &'a Tensor)>,
    /// E_prompt, the prompt embeddings `[P, C]` (shared) or `[B, P, C]`.
    pub e_prompt: Option<&'a Tensor>,
    /// `[B]` bool: the row has a report. Unpaired rows never use A_r.
    pub paired: &'a Tensor,
}

/// M_b (step 3): the union of the strategy's top-λ1 maps, `[B, N]` bool.
/// Unpaired rows skip the report map: M_b = M(A_p) ∪ M(A_i).
pub fn candidate_mask(inputs: &MaskInputs, cfg: &AttMimConfig) -> Tensor {
    let _guard = tch::no_grad_guard();
    let e_img = inputs.e_img.detach();
    let (b, n, _) = e_img.size3().expect("e_img must be [B, N, C]");
    let none = Tensor::zeros([b, n], (Kind::Bool, e_img.device()));
    let map = |ctx: &Tensor, valid: Option<&Tensor>| {
        top_mask(
            &patch_scores(&attention_map(&e_img, &ctx.detach(), valid), cfg.score),
            cfg.lambda1,
        )
    };
    let report = || match inputs.e_report {
        // where(): an unpaired row's report map (padding only, maybe NaN) is
        // computed with the batch but never read.
        Some((e_r, valid)) => map(e_r, Some(valid)).logical_and(&inputs.paired.unsqueeze(1)),
        None => none.shallow_clone(),
    };
    let prompt = || match inputs.e_prompt {
        Some(p) if p.dim() == 2 => map(&p.unsqueeze(0).expand([b, -1, -1], false), None),
        Some(p) => map(p, None),
        None => panic!("strategy {:?} needs prompt embeddings", cfg.strategy),
    };
    let image = || map(&e_img, None);
    match cfg.strategy {
        MaskStrategy::Random => none,
        MaskStrategy::ImageReport => report(),
        MaskStrategy::PromptDriven => prompt(),
        MaskStrategy::ImageSelf => image(),
        MaskStrategy::AttMim => report().logical_or(&prompt()).logical_or(&image()),
    }
}

/// Final mask (step 4): a random subset of the candidates covering
/// round(λ2·N) patches, filled up with random other patches when M_b is
/// smaller. `candidates: [B, N]` bool, `noise: [B, N]` uniform in [0, 1).
pub fn select_mask(candidates: &Tensor, noise: &Tensor, lambda2: f64) -> MaskSelection {
    let (b, n) = candidates.size2().expect("candidates must be [B, N]");
    let n_keep = n - round_frac(lambda2, n);
    // Candidates sort below every other patch (key < 1), random among
    // themselves; masking the lowest keys takes candidates first.
    let key = noise + candidates.logical_not().to_kind(Kind::Float); // [B, N]
    let ids_shuffle = key.argsort(-1, true); // visible first
    let ids_restore = ids_shuffle.argsort(-1, false);
    let ids_keep = ids_shuffle.narrow(1, 0, n_keep); // [B, N_keep]
    let mask = Tensor::ones([b, n], (Kind::Float, candidates.device()));
    let _ = mask.narrow(1, 0, n_keep).fill_(0.0);
    MaskSelection {
        ids_keep,
        mask: mask.gather(1, &ids_restore, false),
        ids_restore,
    }
}

/// AttMIM's whole selection: [`candidate_mask`] then [`select_mask`].
pub fn att_mim_mask(inputs: &MaskInputs, noise: &Tensor, cfg: &AttMimConfig) -> MaskSelection {
    select_mask(&candidate_mask(inputs, cfg), noise, cfg.lambda2)
}

/// Uniform `[B, N]` noise from a seeded ChaCha stream: the same seed gives
/// the same masks on any device.
pub fn mask_noise(b: i64, n: i64, seed: u64, device: Device) -> Tensor {
    mask_noise_rows(0, b, n, seed, device)
}

/// Rows `first..first + b` of the noise [`mask_noise`] draws for a larger
/// batch. Row g is words g·N..(g+1)·N of the seed's stream (one 32-bit word
/// per value), reached by seeking, so a rank holding some rows of a global
/// batch draws for them exactly what one process draws for the whole batch.
pub fn mask_noise_rows(first: i64, b: i64, n: i64, seed: u64, device: Device) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_word_pos(first.max(0) as u128 * n.max(0) as u128);
    let v: Vec<f32> = (0..b * n).map(|_| rng.random::<f32>()).collect();
    crate::transfer::upload(&Tensor::from_slice(&v).view([b, n]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn randn(shape: &[i64], seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn(shape, (Kind::Float, Device::Cpu))
    }

    fn bools(t: &Tensor) -> Vec<Vec<bool>> {
        let (b, n) = t.size2().unwrap();
        (0..b)
            .map(|i| (0..n).map(|j| t.int64_value(&[i, j]) != 0).collect())
            .collect()
    }

    fn inputs_for(b: i64, n: i64, l: i64, seed: i64) -> (Tensor, Tensor, Tensor, Tensor) {
        let e_img = randn(&[b, n, 8], seed);
        let e_rep = randn(&[b, l, 8], seed + 1);
        let valid = Tensor::ones([b, l], (Kind::Bool, Device::Cpu));
        let e_prompt = randn(&[14, 8], seed + 2);
        (e_img, e_rep, valid, e_prompt)
    }

    #[test]
    fn top_mask_marks_ceil_lambda1_n_highest() {
        let scores = Tensor::from_slice(&[5.0f32, 1.0, 9.0, 3.0, 7.0, 0.0, 2.0, 8.0, 4.0, 6.0])
            .view([1, 10]);
        let m = bools(&top_mask(&scores, 0.7)); // ⌈7.000000000000001⌉ must be 7
        assert_eq!(m[0].iter().filter(|&&x| x).count(), 7);
        assert!(
            !m[0][1] && !m[0][5] && !m[0][6],
            "the three lowest stay unmarked: {m:?}"
        );
        assert_eq!(
            bools(&top_mask(&scores, 0.25))[0]
                .iter()
                .filter(|&&x| x)
                .count(),
            3
        );
    }

    #[test]
    fn mask_ratio_is_exact_and_ids_are_consistent() {
        let (b, n) = (4, 196);
        for cands_frac in [0.0, 0.3, 0.9, 1.0] {
            let noise = mask_noise(b, n, 7, Device::Cpu);
            let cands = mask_noise(b, n, 8, Device::Cpu).lt(cands_frac);
            let sel = select_mask(&cands, &noise, 0.75);
            assert_eq!(sel.ids_keep.size(), vec![b, 49]);
            let per_row = sel
                .mask
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
            assert_eq!(
                Vec::<f32>::try_from(&per_row).unwrap(),
                vec![147.0; b as usize]
            );
            // Kept patches are exactly the unmasked ones.
            let kept = sel
                .mask
                .gather(1, &sel.ids_keep, false)
                .sum(Kind::Float)
                .double_value(&[]);
            assert_eq!(kept, 0.0);
            // ids_restore inverts the shuffle: restoring arange(N) in shuffled order.
            let shuffled = sel.ids_restore.argsort(-1, false);
            let back = shuffled.gather(1, &sel.ids_restore, false);
            let ar = Tensor::arange(n, (Kind::Int64, Device::Cpu)).expand([b, n], false);
            assert!(back.equal(&ar));
        }
    }

    #[test]
    fn final_mask_is_a_subset_of_a_large_candidate_set_and_covers_a_small_one() {
        let (b, n) = (3, 100);
        let noise = mask_noise(b, n, 1, Device::Cpu);
        // 90 candidates ≥ 75 masked: every masked patch is a candidate.
        let big = Tensor::arange(n, (Kind::Int64, Device::Cpu))
            .lt(90)
            .expand([b, n], false);
        let sel = select_mask(&big, &noise, 0.75);
        let outside = sel
            .mask
            .to_kind(Kind::Bool)
            .logical_and(&big.logical_not())
            .any()
            .int64_value(&[]);
        assert_eq!(outside, 0);
        // 40 candidates < 75: all candidates masked, 35 filled up from the rest.
        let small = Tensor::arange(n, (Kind::Int64, Device::Cpu))
            .lt(40)
            .expand([b, n], false);
        let sel = select_mask(&small, &noise, 0.75);
        let missed = small
            .logical_and(&sel.mask.to_kind(Kind::Bool).logical_not())
            .any()
            .int64_value(&[]);
        assert_eq!(missed, 0);
        assert_eq!(sel.mask.sum(Kind::Float).double_value(&[]), 75.0 * b as f64);
    }

    #[test]
    fn attmim_candidates_are_the_union_of_the_three_maps() {
        let (e_img, e_rep, valid, e_prompt) = inputs_for(2, 20, 6, 11);
        let paired = Tensor::from_slice(&[true, true]);
        let cfg = |strategy| AttMimConfig {
            lambda1: 0.3,
            strategy,
            ..Default::default()
        };
        let inputs = MaskInputs {
            e_img: &e_img,
            e_report: Some((&e_rep, &valid)),
            e_prompt: Some(&e_prompt),
            paired: &paired,
        };
        let r = candidate_mask(&inputs, &cfg(MaskStrategy::ImageReport));
        let p = candidate_mask(&inputs, &cfg(MaskStrategy::PromptDriven));
        let i = candidate_mask(&inputs, &cfg(MaskStrategy::ImageSelf));
        let u = candidate_mask(&inputs, &cfg(MaskStrategy::AttMim));
        assert!(u.equal(&r.logical_or(&p).logical_or(&i)));
        for m in [&r, &p, &i] {
            let counts = m.sum_dim_intlist([1i64].as_slice(), false, Kind::Int64);
            assert_eq!(Vec::<i64>::try_from(&counts).unwrap(), vec![6, 6]); // ⌈0.3·20⌉
        }
        assert_eq!(
            candidate_mask(&inputs, &cfg(MaskStrategy::Random))
                .any()
                .int64_value(&[]),
            0
        );
    }

    #[test]
    fn unpaired_rows_never_touch_the_report_map() {
        let (e_img, e_rep, valid, e_prompt) = inputs_for(2, 20, 6, 21);
        let paired = Tensor::from_slice(&[true, false]);
        let cfg = AttMimConfig::default();
        let noise = mask_noise(2, 20, 3, Device::Cpu);
        let base = MaskInputs {
            e_img: &e_img,
            e_report: Some((&e_rep, &valid)),
            e_prompt: Some(&e_prompt),
            paired: &paired,
        };
        let sel = att_mim_mask(&base, &noise, &cfg);
        // Garbage (NaN) report and an all-padding mask for the unpaired row.
        let junk = e_rep.copy();
        let _ = junk.get(1).fill_(f64::NAN);
        let junk_valid = valid.copy();
        let _ = junk_valid.get(1).fill_(0);
        let changed = MaskInputs {
            e_report: Some((&junk, &junk_valid)),
            ..base
        };
        let sel2 = att_mim_mask(&changed, &noise, &cfg);
        assert!(sel.mask.equal(&sel2.mask));
        // And the unpaired row's candidates are M(A_p) ∪ M(A_i) exactly.
        let without = MaskInputs {
            e_report: None,
            ..base
        };
        let c_union = candidate_mask(&base, &cfg);
        let c_no_report = candidate_mask(&without, &cfg);
        assert!(c_union.get(1).equal(&c_no_report.get(1)));
    }

    #[test]
    fn rows_of_the_noise_are_the_rows_of_the_whole_draw() {
        let whole = mask_noise(7, 13, 42, Device::Cpu);
        for (first, b) in [(0, 7), (0, 3), (3, 2), (5, 2), (6, 1), (2, 0)] {
            let rows = mask_noise_rows(first, b, 13, 42, Device::Cpu);
            assert!(
                rows.equal(&whole.narrow(0, first, b)),
                "rows {first}..{}",
                first + b
            );
        }
        assert!(!mask_noise_rows(1, 1, 13, 43, Device::Cpu).equal(&whole.narrow(0, 1, 1)));
    }

    #[test]
    fn same_seed_same_mask_other_seed_other_mask() {
        let (e_img, e_rep, valid, e_prompt) = inputs_for(2, 49, 6, 31);
        let paired = Tensor::from_slice(&[true, false]);
        let inputs = MaskInputs {
            e_img: &e_img,
            e_report: Some((&e_rep, &valid)),
            e_prompt: Some(&e_prompt),
            paired: &paired,
        };
        let cfg = AttMimConfig::default();
        let a = att_mim_mask(&inputs, &mask_noise(2, 49, 5, Device::Cpu), &cfg);
        let b = att_mim_mask(&inputs, &mask_noise(2, 49, 5, Device::Cpu), &cfg);
        let c = att_mim_mask(&inputs, &mask_noise(2, 49, 6, Device::Cpu), &cfg);
        assert!(a.ids_keep.equal(&b.ids_keep) && a.mask.equal(&b.mask));
        assert!(!a.mask.equal(&c.mask));
    }

    #[test]
    fn a_patch_matching_the_report_ranks_top_in_the_report_map() {
        // Report tokens: scaled basis vectors. Patch 3 equals token 0 (×4);
        // other patches are small noise and attend to all tokens alike, so
        // their rows average the tokens and have a smaller norm.
        let c = 8;
        let e_rep = (Tensor::eye(c, (Kind::Float, Device::Cpu)).narrow(0, 0, 5) * 4.0).unsqueeze(0);
        let e_img = randn(&[1, 10, c], 41) * 0.1;
        e_img.get(0).get(3).copy_(&e_rep.get(0).get(0));
        let scores = patch_scores(&attention_map(&e_img, &e_rep, None), PatchScore::Norm);
        let top = top_mask(&scores, 0.1); // ⌈0.1·10⌉ = 1 patch
        assert_eq!(top.int64_value(&[0, 3]), 1, "scores {scores}");
    }
}
