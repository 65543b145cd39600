//! MMCLIP assembled: CLIP plus AttMIM's pixel decoder and EntMLM's text
//! decoder, and the training step that turns one mixed batch into the
//! three losses (METHOD.md, "Losses and schedule").
//!
//! One step, for a batch whose first `paired_rows` rows carry a report:
//! 1. the image encoder on every full image → pooled embeddings and E_img;
//! 2. the text encoder on the paired reports → pooled embeddings and
//!    E_report; the prompts → E_prompt (without gradient);
//! 3. AttMIM selects the masked patches from E_img, E_report, E_prompt
//!    (without gradient; unpaired rows skip the report map);
//! 4. Loss_MIM on every row: "input" mode encodes the visible patches again
//!    and decodes pixels (MAE); "feature" mode feeds the visible E_img
//!    tokens to the decoder (the paper's eq. 9);
//! 5. Loss_MLM on the paired rows: EntMLM's selected tokens are swapped for
//!    a learned mask embedding (CLIP's vocabulary has no mask token), the
//!    text encoder runs again, and the decoder, cross-attending to E_img,
//!    predicts the original token at each selected position from the
//!    earlier tokens (causal) and the image;
//! 6. Loss_align on the paired rows (joint phase only).
//!
//! The masks come from seeded noise ([`crate::att_mim::mask_noise`]), so a
//! step is a pure function of weights, batch and seed.
//!
//! **Data parallel.** With a [`Shard`], the batch is one rank's rows of a
//! global batch and the step computes what one process computes for those
//! rows, so that the mean of the ranks' gradients is one process's
//! gradient: each row's noise is its row of the global batch's draw
//! ([`crate::att_mim::mask_noise_rows`]); Loss_align runs over the rows of
//! every rank ([`crate::dist::ProcessGroup::all_gather_with_grad`]);
//! Loss_MLM divides by the count of selected tokens over all ranks. Loss_MIM
//! needs nothing: every row masks the same number of patches and every rank
//! holds the same number of rows, so its mean over the ranks is the global
//! mean.

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Kind, Tensor};

use crate::att_mim::{self, AttMimConfig, MaskInputs, MaskSelection};
use crate::cast::WeightCasts;
use crate::clip::{Clip, Encoded};
use crate::config::ClipConfig;
use crate::dist::{DistError, ProcessGroup};
use crate::ent_mlm::{self, MlmStrategy, TextDecoder, TextDecoderConfig, TextDecoderDims};
use crate::losses;
use crate::mim::{self, MimDecoder, MimDecoderConfig, MimDecoderDims};

/// What the MIM decoder reconstructs from (METHOD.md, AttMIM step 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MimMode {
    /// MAE: the image encoder runs again on the visible patches only.
    #[default]
    Input,
    /// The paper's eq. 9: the visible tokens of E_img (projected, width C)
    /// go to the decoder; no second encoder pass.
    Feature,
}

/// How the prompts enter the prompt-driven attention map A_p.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptFeatures {
    /// One pooled embedding per prompt: E_prompt is `[P, C]`.
    #[default]
    Pooled,
    /// Every real token of every prompt (start to end-of-text).
    Tokens,
}

/// Training phase: the warm-up trains the masked-modelling losses only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Loss_MIM + Loss_MLM.
    WarmUp,
    /// Loss_align + Loss_MIM + Loss_MLM.
    Joint,
}

/// Weights of the three terms in the total loss (all 1 in the paper).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LossWeights {
    /// Loss_align.
    pub align: f64,
    /// Loss_MIM.
    pub mim: f64,
    /// Loss_MLM.
    pub mlm: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self {
            align: 1.0,
            mim: 1.0,
            mlm: 1.0,
        }
    }
}

/// The whole model's settings. `Default` is the paper's (ViT-B/16),
/// [`MmclipConfig::tiny`] the tests'. It holds only what can be chosen: the
/// decoders' input widths, patch grid and vocabulary follow from `clip` and
/// `mim_mode` ([`MmclipConfig::mim_decoder_dims`],
/// [`MmclipConfig::text_decoder_dims`]). Older `run.json` files also wrote
/// those derived sizes into `mim_decoder` and `text_decoder`; they were never
/// used, and reading such a file ignores them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MmclipConfig {
    /// The two encoders.
    pub clip: ClipConfig,
    /// AttMIM's mask selection (λ1, λ2, score, strategy).
    pub att_mim: AttMimConfig,
    /// Input (MAE) or feature masking.
    pub mim_mode: MimMode,
    /// Per-patch normalised pixel targets (MAE's `norm_pix_loss`).
    pub norm_pix_loss: bool,
    /// The MAE-style pixel decoder (depth, width, heads).
    pub mim_decoder: MimDecoderConfig,
    /// EntMLM's token selection.
    pub mlm: MlmStrategy,
    /// The text decoder (depth, heads, MLP width).
    pub text_decoder: TextDecoderConfig,
    /// Pooled or token prompt features for A_p.
    pub prompt_features: PromptFeatures,
    /// Weights of the loss terms.
    pub loss_weights: LossWeights,
}

impl Default for MmclipConfig {
    fn default() -> Self {
        Self {
            clip: ClipConfig::vit_b16(),
            att_mim: AttMimConfig::default(),
            mim_mode: MimMode::Input,
            norm_pix_loss: true,
            mim_decoder: MimDecoderConfig::default(),
            mlm: MlmStrategy::default(),
            text_decoder: TextDecoderConfig::default(),
            prompt_features: PromptFeatures::Pooled,
            loss_weights: LossWeights::default(),
        }
    }
}

impl MmclipConfig {
    /// Tiny encoders and decoders for tests (32 px images, 16 patches).
    pub fn tiny() -> Self {
        Self {
            clip: ClipConfig::tiny(),
            mim_decoder: MimDecoderConfig::tiny(),
            text_decoder: TextDecoderConfig::tiny(),
            ..Default::default()
        }
    }

    /// The pixel decoder's input width (the encoder's width in "input"
    /// mode, C in "feature" mode) and the encoder's patch grid.
    pub fn mim_decoder_dims(&self) -> MimDecoderDims {
        let in_dim = match self.mim_mode {
            MimMode::Input => self.clip.vision.hidden_size,
            MimMode::Feature => self.clip.projection_dim,
        };
        MimDecoderDims::of(&self.clip.vision, in_dim)
    }

    /// The text decoder's widths and vocabulary, the encoders'.
    pub fn text_decoder_dims(&self) -> TextDecoderDims {
        TextDecoderDims::of(&self.clip)
    }
}

/// One training batch as tensors, on the model's device. Rows
/// `0..paired_rows` have a report; the rest are images only.
#[derive(Debug)]
pub struct StepBatch {
    /// `[B, 3, H, W]` float, CLIP-normalised.
    pub pixels: Tensor,
    /// `[P, L]` int64 token ids of the paired rows (zero-padded). Columns
    /// after the last end-of-text change nothing (the text encoders are
    /// causal) but cost time: `train` cuts them on the host, where the
    /// lengths are known, since reading them here would make the host
    /// wait for the device.
    pub input_ids: Tensor,
    /// `[P, L]` bool: the token lies inside a medical entity span.
    pub entity: Tensor,
}

impl StepBatch {
    /// Rows with a report.
    pub fn paired_rows(&self) -> i64 {
        self.input_ids.size()[0]
    }
}

/// The random draws of one step: AttMIM's patch noise `[B, N]` and
/// EntMLM's token noise `[P, context]` (the whole context, cut to the
/// batch's text width where it is used). [`Mmclip::step_noise`] draws them
/// from a step's seed; a captured CUDA graph keeps them in fixed buffers
/// that each replay's draws are copied into.
#[derive(Debug)]
pub struct StepNoise {
    /// `[B, N]` float in [0, 1): the patch noise of every row.
    pub patches: Tensor,
    /// `[P, context]` float in [0, 1): the token noise of the paired rows.
    pub tokens: Tensor,
}

impl StepNoise {
    /// `self = other`, in place (a copy into a captured graph's buffers).
    pub fn copy_from(&mut self, other: &StepNoise) {
        self.patches.copy_(&other.patches);
        self.tokens.copy_(&other.tokens);
    }
}

/// The loss terms of one step; `total` is what is minimised.
#[derive(Debug)]
pub struct Losses {
    /// Loss_align over the paired rows (joint phase with ≥ 1 paired row).
    pub align: Option<Tensor>,
    /// Loss_MIM over the masked patches of every row.
    pub mim: Tensor,
    /// Loss_MLM over the selected tokens of the paired rows (`None`
    /// without paired rows; 0 when no token was selected).
    pub mlm: Option<Tensor>,
    /// The weighted sum of the present terms.
    pub total: Tensor,
}

/// One rank's place in a data-parallel step: its group and where its rows
/// sit in the global batch. The global batch holds the paired rows of every
/// rank first (rank 0's, then rank 1's, …), then the unpaired rows in the
/// same order, as the loader slices it.
#[derive(Debug, Clone, Copy)]
pub struct Shard<'a> {
    /// The group; every rank runs the step with its own rows.
    pub group: &'a ProcessGroup,
    /// Index in the global batch of this rank's first paired row.
    pub first_paired: i64,
    /// Index in the global batch of this rank's first unpaired row.
    pub first_unpaired: i64,
}

impl<'a> Shard<'a> {
    /// The place of this rank's `paired` and `unpaired` rows when every rank
    /// holds as many of each (the loader's equal slices).
    pub fn new(group: &'a ProcessGroup, paired: i64, unpaired: i64) -> Shard<'a> {
        let (w, r) = (group.world_size() as i64, group.rank() as i64);
        Shard {
            group,
            first_paired: r * paired,
            first_unpaired: w * paired + r * unpaired,
        }
    }
}

/// Where a batch's rows sit in the global batch: the first paired and the
/// first unpaired row's indices (0 and P on one process).
#[derive(Debug, Clone, Copy)]
struct Rows {
    first_paired: i64,
    first_unpaired: i64,
}

impl Rows {
    fn of(shard: Option<&Shard>, paired: i64) -> Rows {
        shard.map_or(
            Rows {
                first_paired: 0,
                first_unpaired: paired,
            },
            |s| Rows {
                first_paired: s.first_paired,
                first_unpaired: s.first_unpaired,
            },
        )
    }

    /// The `[B, N]` noise of a batch of `b` rows, `p` of them paired: each
    /// row's row of the global batch's draw.
    fn noise(&self, b: i64, p: i64, n: i64, seed: u64, device: tch::Device) -> Tensor {
        Tensor::cat(
            &[
                att_mim::mask_noise_rows(self.first_paired, p, n, seed, device),
                att_mim::mask_noise_rows(self.first_unpaired, b - p, n, seed, device),
            ],
            0,
        )
    }
}

/// Everything a step computed besides the losses, for pictures and tests.
#[derive(Debug)]
pub struct StepTrace {
    /// AttMIM's final mask.
    pub mask: MaskSelection,
    /// AttMIM's candidate set M_b, `[B, N]` bool.
    pub candidates: Tensor,
    /// EntMLM's selected positions, `[P, L]` bool.
    pub mlm_selected: Tensor,
}

/// MMCLIP: CLIP, the prompt token ids, AttMIM's pixel decoder and EntMLM's
/// mask embedding and text decoder. Variables: `clip.*` (HF `CLIPModel`
/// names below it), `mim_decoder.*` (MAE names), `mlm.mask_embedding`,
/// `mlm.decoder.*`.
#[derive(Debug)]
pub struct Mmclip {
    /// The encoders (what downstream tasks keep).
    pub clip: Clip,
    mim_decoder: MimDecoder,
    mask_embedding: Tensor,
    text_decoder: TextDecoder,
    prompt_ids: Tensor,
    /// Flat positions in `prompt_ids` of the prompts' real tokens (start
    /// to end-of-text), found once: the prompts are fixed for the run, and
    /// finding them in each step would make the host wait for the device
    /// (`nonzero`), which a CUDA graph cannot capture.
    prompt_tokens: Tensor,
    /// The weights its steps cast to autocast's reduced type (see
    /// [`crate::cast`]).
    weight_casts: WeightCasts,
    cfg: MmclipConfig,
}

/// Seed of EntMLM's token-selection noise in a step seeded with `seed`
/// (AttMIM's patch noise uses `seed` itself).
pub fn mlm_noise_seed(seed: u64) -> u64 {
    seed.wrapping_add(0x9e37_79b9_7f4a_7c15)
}

impl Mmclip {
    /// Builds the model under `p`; `prompt_ids: [P, L]` are the tokenised
    /// disease/device prompts of the prompt-driven map.
    pub fn new(p: nn::Path, cfg: &MmclipConfig, prompt_ids: Tensor) -> Self {
        let mlm = &p / "mlm";
        let clip = Clip::new(&p / "clip", &cfg.clip);
        let prompt_ids = trim_prompts(prompt_ids).to_device(p.device());
        let prompt_tokens = real_tokens(&prompt_ids, &clip, true)
            .reshape([-1])
            .nonzero()
            .squeeze_dim(1);
        Self {
            clip,
            mim_decoder: MimDecoder::new(
                &p / "mim_decoder",
                &cfg.mim_decoder,
                cfg.mim_decoder_dims(),
            ),
            mask_embedding: mlm.randn("mask_embedding", &[cfg.clip.text.hidden_size], 0.0, 0.02),
            text_decoder: TextDecoder::new(
                &mlm / "decoder",
                &cfg.text_decoder,
                cfg.text_decoder_dims(),
            ),
            prompt_ids,
            prompt_tokens,
            weight_casts: WeightCasts::default(),
            cfg: cfg.clone(),
        }
    }

    /// How its steps cast weights under autocast (once per step by default).
    pub fn weight_casts(&self) -> &WeightCasts {
        &self.weight_casts
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &MmclipConfig {
        &self.cfg
    }

    /// The prompt token ids, `[P, L]`.
    pub fn prompt_ids(&self) -> &Tensor {
        &self.prompt_ids
    }

    /// E_prompt for A_p, computed without gradient: `[P, C]` pooled, or
    /// `[M, C]` with every real token of every prompt.
    pub fn prompt_features(&self) -> Tensor {
        let _guard = tch::no_grad_guard();
        let e = self.clip.encode_text(&self.prompt_ids);
        match self.cfg.prompt_features {
            PromptFeatures::Pooled => e.pooled,
            PromptFeatures::Tokens => {
                let c = e.tokens.size()[2];
                e.tokens
                    .reshape([-1, c])
                    .index_select(0, &self.prompt_tokens)
            }
        }
    }

    /// The AttMIM settings the model trains with.
    pub fn att_mim_config(&self) -> &AttMimConfig {
        &self.cfg.att_mim
    }

    /// AttMIM for one batch from its full-image and report encodings:
    /// candidate set M_b and final mask. `settings` replaces the configured
    /// ones (mask pictures compare strategies and λ1). Runs without gradient.
    pub fn select_mask(
        &self,
        image: &Encoded,
        report: Option<&Encoded>,
        input_ids: &Tensor,
        seed: u64,
        settings: Option<&AttMimConfig>,
    ) -> (Tensor, MaskSelection) {
        let p = input_ids.size()[0];
        let (b, n, _) = image.tokens.size3().expect("E_img must be [B, N, C]");
        let noise = Rows::of(None, p).noise(b, p, n, seed, image.tokens.device());
        self.select_mask_with(image, report, input_ids, &noise, settings)
    }

    /// [`Mmclip::select_mask`] with the patch noise given (`[B, N]`).
    fn select_mask_with(
        &self,
        image: &Encoded,
        report: Option<&Encoded>,
        input_ids: &Tensor,
        noise: &Tensor,
        settings: Option<&AttMimConfig>,
    ) -> (Tensor, MaskSelection) {
        let _guard = tch::no_grad_guard();
        let (b, _, c) = image.tokens.size3().expect("E_img must be [B, N, C]");
        let device = image.tokens.device();
        let p = input_ids.size()[0];
        let paired = Tensor::arange(b, (Kind::Int64, device)).lt(p);
        // E_report over the whole batch: unpaired rows are zeros with no
        // valid token, and candidate_mask never reads them.
        let report_full = report.filter(|_| p > 0).map(|r| {
            let l = r.tokens.size()[1];
            let pad = Tensor::zeros([b - p, l, c], (r.tokens.kind(), device));
            let valid = real_tokens(input_ids, &self.clip, true);
            let no_valid = Tensor::zeros([b - p, l], (Kind::Bool, device));
            (
                Tensor::cat(&[r.tokens.detach(), pad], 0),
                Tensor::cat(&[valid, no_valid], 0),
            )
        });
        let e_prompt = self.prompt_features();
        let cfg = settings.unwrap_or(&self.cfg.att_mim);
        let inputs = MaskInputs {
            e_img: &image.tokens,
            e_report: report_full.as_ref().map(|(e, v)| (e, v)),
            e_prompt: Some(&e_prompt),
            paired: &paired,
        };
        let candidates = att_mim::candidate_mask(&inputs, cfg);
        let mask = att_mim::select_mask(&candidates, noise, cfg.lambda2);
        (candidates, mask)
    }

    /// One training step's forward pass: the losses of `batch` in `phase`,
    /// with masks drawn from `seed`. Call `backward` on `total`.
    pub fn step(&self, batch: &StepBatch, phase: Phase, seed: u64) -> (Losses, StepTrace) {
        match self.step_sharded(batch, phase, seed, None) {
            Ok(step) => step,
            Err(e) => unreachable!("a step without a group calls no collective: {e}"),
        }
    }

    /// [`Mmclip::step`] on one rank's rows of a global batch (`shard`; `None`
    /// is one process): the masks are those of these rows in the global
    /// batch, Loss_align is over every rank's rows, and the mean over the
    /// ranks of each loss and of its gradient is the global batch's. Every
    /// rank must call it with the same `phase`, `seed` and row counts; it
    /// fails when a collective does.
    pub fn step_sharded(
        &self,
        batch: &StepBatch,
        phase: Phase,
        seed: u64,
        shard: Option<&Shard>,
    ) -> Result<(Losses, StepTrace), DistError> {
        let noise = self.step_noise(batch, seed, shard, batch.pixels.device());
        self.step_with_noise(batch, phase, &noise, shard)
    }

    /// The draws of a step of `batch` seeded with `seed` (this rank's rows
    /// of the global batch's draws with a shard), on `device`: a step
    /// given them computes what [`Mmclip::step_sharded`] computes.
    pub fn step_noise(
        &self,
        batch: &StepBatch,
        seed: u64,
        shard: Option<&Shard>,
        device: tch::Device,
    ) -> StepNoise {
        let p = batch.paired_rows();
        let rows = Rows::of(shard, p);
        let (b, _, h, w) = batch.pixels.size4().expect("pixels must be [B, 3, H, W]");
        let patch = self.cfg.clip.vision.patch_size;
        let n = (h / patch) * (w / patch);
        let context = self
            .cfg
            .clip
            .text
            .max_position_embeddings
            .max(batch.input_ids.size()[1]);
        StepNoise {
            patches: rows.noise(b, p, n, seed, device),
            tokens: att_mim::mask_noise_rows(
                rows.first_paired,
                p,
                context,
                mlm_noise_seed(seed),
                device,
            ),
        }
    }

    /// [`Mmclip::step_sharded`] with the step's draws given: nothing in it
    /// reads the host, so a CUDA graph can capture it (with `noise` and
    /// `batch` in fixed buffers).
    pub fn step_with_noise(
        &self,
        batch: &StepBatch,
        phase: Phase,
        noise: &StepNoise,
        shard: Option<&Shard>,
    ) -> Result<(Losses, StepTrace), DistError> {
        // Under autocast, the weights are cast in groups while it lives.
        let _casts = self.weight_casts.begin(batch.pixels.device());
        let p = batch.paired_rows();
        let image = self.clip.encode_image(&batch.pixels);
        // Warm-up needs the report only for the masks: no graph.
        let report = (p > 0).then(|| match phase {
            Phase::Joint => self.clip.encode_text(&batch.input_ids),
            Phase::WarmUp => tch::no_grad(|| self.clip.encode_text(&batch.input_ids)),
        });
        let (candidates, mask) = self.select_mask_with(
            &image,
            report.as_ref(),
            &batch.input_ids,
            &noise.patches,
            None,
        );

        let mim = self.mim_loss(&batch.pixels, &image, &mask);
        let (mlm, mlm_selected) = self.mlm_loss(batch, &image, &noise.tokens, shard)?;
        let align = match (phase, &report) {
            (Phase::Joint, Some(r)) => {
                let image = image.pooled.narrow(0, 0, p);
                Some(match shard {
                    None => losses::clip_loss(&image, &r.pooled, self.clip.logit_scale()),
                    // Every rank computes the global batch's loss. logit_scale
                    // enters it directly, so its gradient is the global one on
                    // every rank and so is their mean; the embeddings' factor
                    // W makes the mean of the rest the global gradient too.
                    Some(s) => losses::clip_loss(
                        &s.group.all_gather_with_grad(&image)?,
                        &s.group.all_gather_with_grad(&r.pooled)?,
                        self.clip.logit_scale(),
                    ),
                })
            }
            _ => None,
        };

        let w = &self.cfg.loss_weights;
        let total = [
            Some(&mim * w.mim),
            mlm.as_ref().map(|l| l * w.mlm),
            align.as_ref().map(|l| l * w.align),
        ]
        .into_iter()
        .flatten()
        .reduce(|a, b| a + b)
        .expect("Loss_MIM is always present");
        Ok((
            Losses {
                align,
                mim,
                mlm,
                total,
            },
            StepTrace {
                mask,
                candidates,
                mlm_selected,
            },
        ))
    }

    /// Loss_MIM: decode every patch from the visible ones, score the masked.
    fn mim_loss(&self, pixels: &Tensor, image: &Encoded, mask: &MaskSelection) -> Tensor {
        let latent = match self.cfg.mim_mode {
            MimMode::Input => self.clip.image_hidden_visible(pixels, &mask.ids_keep),
            MimMode::Feature => {
                let (b, _, c) = image.tokens.size3().expect("E_img must be [B, N, C]");
                let k = mask.ids_keep.size()[1];
                let visible = image.tokens.gather(
                    1,
                    &mask.ids_keep.unsqueeze(-1).expand([b, k, c], false),
                    false,
                );
                Tensor::cat(&[image.pooled.unsqueeze(1), visible], 1)
            }
        };
        let pred = self.mim_decoder.forward(&latent, &mask.ids_restore);
        let target = mim::patchify(pixels, self.cfg.clip.vision.patch_size);
        losses::mim_loss(&target, &pred, &mask.mask, self.cfg.norm_pix_loss)
    }

    /// Loss_MLM on the paired rows, and the selected positions `[P, L]`.
    /// The noise is drawn for the whole context
    /// (`max_position_embeddings`) and cut to the width used, so neither
    /// trimming nor padding changes which tokens are selected. The decoder
    /// scores a fixed number of slots per row ([`ent_mlm::Slots`]), so no
    /// shape depends on how many tokens were selected.
    ///
    /// With a shard the loss is this rank's sum over its selected tokens
    /// divided by the mean count of selected tokens per rank (W·Σ_r / S):
    /// its mean over the ranks is Σ / S, the global batch's mean. It is 0
    /// when no token was selected.
    fn mlm_loss(
        &self,
        batch: &StepBatch,
        image: &Encoded,
        noise: &Tensor,
        shard: Option<&Shard>,
    ) -> Result<(Option<Tensor>, Tensor), DistError> {
        let ids = &batch.input_ids;
        let (p, l) = ids.size2().expect("input_ids must be [P, L]");
        let device = ids.device();
        if p == 0 {
            return Ok((None, Tensor::zeros([0, l], (Kind::Bool, device))));
        }
        let predictable = real_tokens(ids, &self.clip, false);
        let noise = noise.narrow(1, 0, l);
        let selected = ent_mlm::select_tokens(&predictable, &batch.entity, &noise, self.cfg.mlm);
        let slots = ent_mlm::slots(&selected, ent_mlm::capacity(self.cfg.mlm, l));
        // The count of selected tokens, or its mean over the ranks, stays
        // on the device: reading it would make the host wait mid-step.
        let count = selected.sum(Kind::Float).reshape([1]);
        if let Some(s) = shard {
            s.group.all_reduce_mean(std::slice::from_ref(&count))?;
        }
        let hidden =
            self.clip
                .text_hidden_masked(ids, &selected, &self.mask_embedding.to_kind(Kind::Float));
        let image_tokens = image.tokens.narrow(0, 0, p);
        let logits = self
            .text_decoder
            .forward_selected(&hidden, &image_tokens, &slots.index); // [P·K, V]
        let loss = losses::mlm_loss(&logits, ids, &slots, &count.reshape([]));
        Ok((Some(loss), selected))
    }
}

/// Prompt ids without the padding columns after the longest prompt's
/// end-of-text (the largest id in each row).
fn trim_prompts(ids: Tensor) -> Tensor {
    let (n, l) = ids.size2().expect("prompt ids must be [P, L]");
    if n == 0 {
        return ids;
    }
    let used = ids.argmax(-1, false).max().int64_value(&[]) + 1;
    ids.narrow(1, 0, used.min(l))
}

/// `[B, L]` bool of real token positions up to and including end-of-text;
/// with `with_start` false the start token (position 0) is excluded (the
/// positions a causal decoder can predict).
fn real_tokens(input_ids: &Tensor, clip: &Clip, with_start: bool) -> Tensor {
    let (b, l) = input_ids.size2().expect("input_ids must be [B, L]");
    let device = input_ids.device();
    let eot = clip.text_model().eot_positions(input_ids).unsqueeze(1); // [B, 1]
    let pos = Tensor::arange(l, (Kind::Int64, device))
        .unsqueeze(0)
        .expand([b, l], false);
    let upto = pos.le_tensor(&eot);
    if with_start {
        upto
    } else {
        upto.logical_and(&pos.ge(1))
    }
}

/// Seed of step `step` of a run seeded with `run_seed`: masks differ from
/// step to step and repeat when a run is repeated or resumed.
pub fn step_seed(run_seed: u64, step: u64) -> u64 {
    run_seed
        .wrapping_mul(0x2545_f491_4f6c_dd1d)
        .wrapping_add(step.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

#[cfg(test)]
mod tests;
