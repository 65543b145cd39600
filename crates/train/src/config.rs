//! The training configuration: one TOML file, every default the paper's
//! (METHOD.md, "Losses and schedule"). `train config` prints it in full.

use std::path::{Path, PathBuf};

use model::att_mim::AttMimConfig;
use model::ent_mlm::MlmStrategy;
use model::mmclip::{LossWeights, MimMode, PromptFeatures};
use model::{ClipConfig, MmclipConfig};
use serde::{Deserialize, Serialize};

use crate::prompts::{Templates, default_disease_prompts};

/// Encoder sizes to build when not initialising from a Hugging Face folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// CLIP ViT-B/16 (the paper's).
    #[default]
    VitB16,
    /// A small CPU-sized model for the demo: 224 px in 32 px patches (49),
    /// 4 layers of width 192 in both encoders, small decoders.
    Small,
    /// A tiny model for tests: 224 px in 32 px patches, width 32, the
    /// CLIP vocabulary and context.
    Tiny,
}

/// `[model]`: what to build and how to initialise it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// Model sizes: the encoders' and the decoders'. With `init` the
    /// encoders are those of its config.json and the preset sizes the
    /// decoders only.
    pub preset: Preset,
    /// A Hugging Face `CLIPModel` folder (config.json + model.safetensors)
    /// to start from; from scratch when absent.
    pub init: Option<PathBuf>,
    /// AttMIM (λ1, λ2, score, strategy).
    pub att_mim: AttMimConfig,
    /// Input (MAE) or feature masking.
    pub mim_mode: MimMode,
    /// Per-patch normalised pixel targets.
    pub norm_pix_loss: Option<bool>,
    /// EntMLM selection, e.g. `{ kind = "entity", p = 0.2 }`.
    pub mlm: MlmStrategy,
    /// Pooled or token prompt features.
    pub prompt_features: PromptFeatures,
    /// Weights of the three losses.
    pub loss_weights: LossWeights,
}

impl ModelSection {
    /// The full model configuration for encoders `clip`.
    pub fn mmclip(&self, clip: ClipConfig) -> MmclipConfig {
        let base = match self.preset {
            Preset::Tiny => tiny(),
            Preset::Small => small(),
            Preset::VitB16 => MmclipConfig::default(),
        };
        MmclipConfig {
            clip,
            att_mim: self.att_mim.clone(),
            mim_mode: self.mim_mode,
            norm_pix_loss: self.norm_pix_loss.unwrap_or(base.norm_pix_loss),
            mlm: self.mlm,
            prompt_features: self.prompt_features,
            loss_weights: self.loss_weights.clone(),
            ..base
        }
    }

    /// The encoders of the preset.
    pub fn preset_clip(&self) -> ClipConfig {
        match self.preset {
            Preset::VitB16 => ClipConfig::vit_b16(),
            Preset::Small => small().clip,
            Preset::Tiny => tiny().clip,
        }
    }
}

/// The test model: the model crate's tiny encoders on the loader's
/// 224-px images and the real tokenizer's ids.
fn tiny() -> MmclipConfig {
    let mut cfg = MmclipConfig::tiny();
    (cfg.clip.vision.image_size, cfg.clip.vision.patch_size) = (224, 32);
    (
        cfg.clip.text.vocab_size,
        cfg.clip.text.max_position_embeddings,
    ) = (49408, schemas::CONTEXT_LENGTH as i64);
    cfg
}

/// The demo's model: ViT-S-like encoders small enough to train on 2 cores.
fn small() -> MmclipConfig {
    let mut cfg = MmclipConfig::default();
    let v = &mut cfg.clip.vision;
    (
        v.hidden_size,
        v.intermediate_size,
        v.num_hidden_layers,
        v.num_attention_heads,
        v.patch_size,
    ) = (192, 768, 4, 3, 32);
    let t = &mut cfg.clip.text;
    (
        t.hidden_size,
        t.intermediate_size,
        t.num_hidden_layers,
        t.num_attention_heads,
    ) = (192, 768, 4, 3);
    cfg.clip.projection_dim = 128;
    let d = &mut cfg.mim_decoder;
    (d.hidden_size, d.num_layers, d.num_heads) = (128, 2, 4);
    let d = &mut cfg.text_decoder;
    (d.num_layers, d.num_heads, d.intermediate_size) = (1, 3, 768);
    cfg
}

/// Optimiser family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OptimKind {
    /// SGD with momentum (the paper's).
    #[default]
    Sgd,
    /// AdamW (decoupled weight decay).
    Adamw,
}

/// Learning-rate schedule over the run's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// The base rate throughout (the paper's).
    #[default]
    Constant,
    /// Linear ramp over `lr_warmup_steps`, then cosine decay to zero.
    Cosine,
}

/// Mixed precision of the forward pass on CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Autocast {
    /// bfloat16 autocast (the paper's setting): float32's range, so no
    /// loss scaling.
    #[default]
    Bf16,
    /// float16 autocast. This trainer has no loss scaling, so small
    /// gradients can underflow to zero: opt in knowingly.
    F16,
    /// float32 throughout.
    Off,
}

impl Autocast {
    /// The reduced type on `device`: the CPU always runs float32 (few CPUs
    /// compute bfloat16 faster than float32).
    pub fn reduced_on(self, device: tch::Device) -> Option<model::autocast::Reduced> {
        use model::autocast::Reduced;
        match self {
            _ if !device.is_cuda() => None,
            Autocast::Bf16 => Some(Reduced::BFloat16),
            Autocast::F16 => Some(Reduced::Half),
            Autocast::Off => None,
        }
    }
}

/// `[optim]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// SGD or AdamW.
    pub kind: OptimKind,
    /// Base learning rate (5e-5).
    pub lr: f64,
    /// SGD momentum (0.9).
    pub momentum: f64,
    /// AdamW's β1, β2.
    pub betas: (f64, f64),
    /// AdamW's ε.
    pub eps: f64,
    /// Weight decay (SGD: L2 added to the gradient; AdamW: decoupled).
    pub weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Steps of linear learning-rate ramp (cosine schedule).
    pub lr_warmup_steps: u64,
    /// Clip the global gradient norm to this value.
    pub grad_clip: Option<f64>,
    /// Batches whose gradients are summed (averaged) per optimiser step.
    pub accumulate: u64,
    /// Update with libtorch's fused kernels (`torch.optim.SGD(fused=True)`,
    /// `AdamW(fused=True)`): one operator per step instead of several per
    /// parameter tensor, the same update within float rounding (1e-6).
    /// Off by default until its GPU speed-up is measured
    /// (`bench/train_step/run.sh`); the plain update is the reference.
    pub fused: bool,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            kind: OptimKind::Sgd,
            lr: 5e-5,
            momentum: 0.9,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            schedule: Schedule::Constant,
            lr_warmup_steps: 0,
            grad_clip: None,
            accumulate: 1,
            fused: false,
        }
    }
}

/// `[train]`: length, mixing, phases, logging, checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Optimiser steps in all.
    pub steps: u64,
    /// Steps of masked-modelling warm-up before joint training (15,000).
    pub warmup_steps: u64,
    /// Global batch size (64).
    pub batch_size: usize,
    /// Share of paired rows in each batch.
    pub paired_fraction: f64,
    /// Seed of the loader order, augmentation, masks and initialisation.
    pub seed: u64,
    /// Loader decode threads.
    pub loader_threads: usize,
    /// Batches the loader prepares ahead.
    pub prefetch: usize,
    /// Write a metrics line every this many steps.
    pub log_every: u64,
    /// Write a checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept; older ones are deleted.
    pub keep_last: usize,
    /// Consecutive non-finite steps tolerated before the run stops.
    pub max_nonfinite_in_a_row: u64,
    /// The loader's training augmentation.
    pub augment: pipeline::AugmentConfig,
    /// Mixed precision of the forward pass on CUDA: `bf16` (default),
    /// `f16` or `off`; the CPU runs float32.
    pub autocast: Autocast,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            steps: 100_000,
            warmup_steps: 15_000,
            batch_size: 64,
            paired_fraction: 0.75,
            seed: 0,
            loader_threads: 4,
            prefetch: 4,
            log_every: 10,
            checkpoint_every: 1000,
            keep_last: 3,
            max_nonfinite_in_a_row: 20,
            augment: pipeline::AugmentConfig::default(),
            autocast: Autocast::Bf16,
        }
    }
}

/// `[zero_shot]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZeroShotConfig {
    /// Prompt pair per class.
    pub templates: Templates,
    /// Bootstrap resamples for the 95% intervals.
    pub bootstrap: usize,
}

impl Default for ZeroShotConfig {
    fn default() -> Self {
        ZeroShotConfig {
            templates: Templates::default(),
            bootstrap: 1000,
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// `[model]`.
    pub model: ModelSection,
    /// `[optim]`.
    pub optim: OptimConfig,
    /// `[train]`.
    pub train: RunConfig,
    /// AttMIM's disease/device prompts (14 by default).
    pub prompts: Vec<String>,
    /// `[zero_shot]`.
    pub zero_shot: ZeroShotConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: ModelSection::default(),
            optim: OptimConfig::default(),
            train: RunConfig::default(),
            prompts: default_disease_prompts(),
            zero_shot: ZeroShotConfig::default(),
        }
    }
}

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML for this schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// Valid TOML, impossible values.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl TrainConfig {
    /// Reads and checks a TOML file; missing keys take the defaults.
    pub fn load(path: &Path) -> Result<TrainConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses TOML text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<TrainConfig, ConfigError> {
        let cfg: TrainConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if let Some(key) = unread_key(text, &cfg) {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: format!(
                    "unknown key `{key}`: no setting has this name (`train config` prints them all)"
                ),
            });
        }
        cfg.check().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(cfg)
    }

    /// The configuration as TOML (what a run records as `config.toml`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serialises")
    }

    /// The first impossible value, named by its key. Every number must be
    /// finite: TOML reads `nan` and `inf`, and a NaN learning rate turns the
    /// weights into NaN without any step failing.
    fn check(&self) -> Result<(), String> {
        let t = &self.train;
        let o = &self.optim;
        self.model
            .att_mim
            .check()
            .map_err(|problem| format!("model.{problem}"))?;
        let w = &self.model.loss_weights;
        for (key, value) in [
            ("model.loss_weights.align", w.align),
            ("model.loss_weights.mim", w.mim),
            ("model.loss_weights.mlm", w.mlm),
        ] {
            at_least(key, value, 0.0)?;
        }
        if let MlmStrategy::Random(p) | MlmStrategy::Entity(p) = self.model.mlm {
            within("model.mlm.p", p, 0.0, 1.0)?;
        }
        positive("optim.lr", o.lr)?;
        // SGD diverges for momentum >= 1; AdamW's betas likewise.
        within_open("optim.momentum", o.momentum, 0.0, 1.0)?;
        within_open("optim.betas[0]", o.betas.0, 0.0, 1.0)?;
        within_open("optim.betas[1]", o.betas.1, 0.0, 1.0)?;
        positive("optim.eps", o.eps)?;
        at_least("optim.weight_decay", o.weight_decay, 0.0)?;
        if let Some(clip) = o.grad_clip {
            positive("optim.grad_clip", clip)?;
        }
        within("train.paired_fraction", t.paired_fraction, 0.0, 1.0)?;
        let a = &t.augment;
        for (key, value) in [
            ("train.augment.crop_scale[0]", a.crop_scale.0),
            ("train.augment.crop_scale[1]", a.crop_scale.1),
            ("train.augment.crop_ratio[0]", a.crop_ratio.0),
            ("train.augment.crop_ratio[1]", a.crop_ratio.1),
        ] {
            positive(key, value as f64)?;
        }
        for (key, value) in [
            ("train.augment.rotate_degrees", a.rotate_degrees),
            ("train.augment.contrast", a.contrast),
            ("train.augment.brightness", a.brightness),
        ] {
            at_least(key, value as f64, 0.0)?;
        }
        within("train.augment.hflip", a.hflip as f64, 0.0, 1.0)?;
        let problems = [
            (t.steps == 0, "train.steps must be at least 1"),
            (t.batch_size == 0, "train.batch_size must be at least 1"),
            (
                t.loader_threads == 0,
                "train.loader_threads must be at least 1",
            ),
            (o.accumulate == 0, "optim.accumulate must be at least 1"),
            (
                self.prompts.is_empty(),
                "prompts must not be empty (AttMIM's prompt map needs them)",
            ),
            (
                t.checkpoint_every == 0,
                "train.checkpoint_every must be at least 1",
            ),
            (t.log_every == 0, "train.log_every must be at least 1"),
            (t.keep_last == 0, "train.keep_last must be at least 1"),
        ];
        match problems.into_iter().find(|(bad, _)| *bad) {
            Some((_, message)) => Err(message.to_string()),
            None => Ok(()),
        }
    }
}

/// The first key of the TOML `text` that `cfg`, read from it, does not hold.
/// `deny_unknown_fields` refuses unknown keys in this file's sections, but
/// not inside the tables defined by other crates (`[model.att_mim]`,
/// `[model.loss_weights]`, `[train.augment]`, `[zero_shot.templates]`),
/// which would take a misspelt key and train with the default; so every key
/// written must come back when the config is written out again.
fn unread_key(text: &str, cfg: &TrainConfig) -> Option<String> {
    fn walk(written: &toml::Table, read: &toml::Table, prefix: &str) -> Option<String> {
        written.iter().find_map(|(key, value)| {
            let name = format!("{prefix}{key}");
            match (value, read.get(key)) {
                (_, None) => Some(name),
                (toml::Value::Table(w), Some(toml::Value::Table(r))) => {
                    walk(w, r, &format!("{name}."))
                }
                _ => None,
            }
        })
    }
    let written: toml::Table = toml::from_str(text).ok()?;
    let read = toml::Table::try_from(cfg).expect("the config serialises");
    walk(&written, &read, "")
}

/// `value` is a finite number (`nan` and `inf` are valid TOML).
fn finite(key: &str, value: f64) -> Result<(), String> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(format!("{key} {value} is not a finite number"))
    }
}

/// `value` is finite and above zero.
fn positive(key: &str, value: f64) -> Result<(), String> {
    finite(key, value)?;
    if value > 0.0 {
        Ok(())
    } else {
        Err(format!("{key} {value} must be positive"))
    }
}

/// `value` is finite and at least `min`.
fn at_least(key: &str, value: f64, min: f64) -> Result<(), String> {
    finite(key, value)?;
    if value >= min {
        Ok(())
    } else {
        Err(format!("{key} {value} must be at least {min}"))
    }
}

/// `value` is finite and in `[lo, hi]`.
fn within(key: &str, value: f64, lo: f64, hi: f64) -> Result<(), String> {
    finite(key, value)?;
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(format!("{key} {value} is not in [{lo}, {hi}]"))
    }
}

/// `value` is finite and in `[lo, hi)`.
fn within_open(key: &str, value: f64, lo: f64, hi: f64) -> Result<(), String> {
    finite(key, value)?;
    if (lo..hi).contains(&value) {
        Ok(())
    } else {
        Err(format!("{key} {value} is not in [{lo}, {hi})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_papers_defaults() {
        let cfg = TrainConfig::parse("", Path::new("empty.toml")).unwrap();
        assert_eq!(cfg.optim.kind, OptimKind::Sgd);
        assert_eq!((cfg.optim.lr, cfg.optim.momentum), (5e-5, 0.9));
        assert_eq!((cfg.train.batch_size, cfg.train.warmup_steps), (64, 15_000));
        let m = cfg.model.mmclip(cfg.model.preset_clip());
        assert_eq!((m.att_mim.lambda1, m.att_mim.lambda2), (0.7, 0.75));
        assert_eq!(m.mlm, MlmStrategy::Entity(0.2));
        assert_eq!(cfg.prompts.len(), 14);
    }

    #[test]
    fn autocast_is_bfloat16_on_cuda_and_float32_on_the_cpu() {
        use model::autocast::Reduced;
        use tch::Device;
        let cfg = TrainConfig::parse("", Path::new("a.toml")).unwrap();
        assert_eq!(
            cfg.train.autocast.reduced_on(Device::Cuda(0)),
            Some(Reduced::BFloat16)
        );
        assert_eq!(cfg.train.autocast.reduced_on(Device::Cpu), None);
        let cfg = TrainConfig::parse("[train]\nautocast = \"f16\"\n", Path::new("b.toml")).unwrap();
        assert_eq!(
            cfg.train.autocast.reduced_on(Device::Cuda(0)),
            Some(Reduced::Half)
        );
        let cfg = TrainConfig::parse("[train]\nautocast = \"off\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(cfg.train.autocast.reduced_on(Device::Cuda(0)), None);
        let e =
            TrainConfig::parse("[train]\nautocast = \"fp8\"\n", Path::new("d.toml")).unwrap_err();
        assert!(
            e.to_string().contains("d.toml") && e.to_string().contains("fp8"),
            "{e}"
        );
    }

    #[test]
    fn the_printed_config_reads_back_identically() {
        let mut cfg = TrainConfig::default();
        cfg.optim.kind = OptimKind::Adamw;
        cfg.model.mlm = MlmStrategy::Random(0.15);
        let back = TrainConfig::parse(&cfg.to_toml(), Path::new("x.toml")).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn bad_values_and_unknown_keys_name_the_file_and_key() {
        let e = TrainConfig::parse("[train]\npaired_fraction = 1.5\n", Path::new("a.toml"))
            .unwrap_err();
        assert!(
            e.to_string().contains("a.toml") && e.to_string().contains("paired_fraction"),
            "{e}"
        );
        let e =
            TrainConfig::parse("[optim]\nlearning_rate = 1.0\n", Path::new("b.toml")).unwrap_err();
        assert!(
            e.to_string().contains("b.toml") && e.to_string().contains("learning_rate"),
            "{e}"
        );
        for (key, value) in [("lambda1", "1.5"), ("lambda1", "-0.1"), ("lambda2", "1.0")] {
            let text = format!("[model.att_mim]\n{key} = {value}\n");
            let e = TrainConfig::parse(&text, Path::new("c.toml")).unwrap_err();
            assert!(
                e.to_string().contains("c.toml")
                    && e.to_string().contains(&format!(
                        "model.att_mim.{key} {}",
                        value.parse::<f64>().unwrap()
                    )),
                "{e}"
            );
        }
        let edges = "[model.att_mim]\nlambda1 = 0.0\nlambda2 = 0.0\n";
        TrainConfig::parse(edges, Path::new("d.toml")).unwrap();
    }

    #[test]
    fn keys_of_nested_tables_that_nothing_reads_are_refused() {
        for (text, key) in [
            ("[model.att_mim]\nlamda1 = 0.5\n", "model.att_mim.lamda1"),
            (
                "[model.loss_weights]\nalign = 1.0\nmlmm = 2.0\n",
                "model.loss_weights.mlmm",
            ),
            ("[train.augment]\nhflipp = 0.5\n", "train.augment.hflipp"),
            (
                "[zero_shot.templates]\npositiv = \"{}\"\n",
                "zero_shot.templates.positiv",
            ),
        ] {
            let e = TrainConfig::parse(text, Path::new("k.toml"))
                .expect_err(&format!("{text:?} was accepted"));
            assert!(
                e.to_string().contains("k.toml") && e.to_string().contains(key),
                "{text:?}: {e}"
            );
        }
        // Every key the schema reads is accepted, nested ones included.
        let text = "[model.att_mim]\nlambda1 = 0.5\n[model.loss_weights]\nmlm = 2.0\n\
                    [train.augment]\nhflip = 0.5\n[model]\nmlm = { kind = \"random\", p = 0.3 }\n";
        let cfg = TrainConfig::parse(text, Path::new("ok.toml")).unwrap();
        assert_eq!(cfg.model.att_mim.lambda1, 0.5);
        assert_eq!(cfg.model.loss_weights.mlm, 2.0);
    }

    #[test]
    fn non_finite_and_out_of_range_numbers_name_their_key() {
        for (section, key, value, named) in [
            ("optim", "lr", "nan", "optim.lr NaN is not a finite number"),
            ("optim", "lr", "inf", "optim.lr inf is not a finite number"),
            ("optim", "lr", "-1e-3", "optim.lr -0.001 must be positive"),
            ("optim", "lr", "0.0", "optim.lr 0 must be positive"),
            ("optim", "weight_decay", "-0.1", "optim.weight_decay -0.1"),
            ("optim", "weight_decay", "nan", "optim.weight_decay NaN"),
            ("optim", "momentum", "1.0", "optim.momentum 1"),
            ("optim", "eps", "-inf", "optim.eps -inf"),
            ("optim", "grad_clip", "nan", "optim.grad_clip NaN"),
            ("optim", "betas", "[0.9, nan]", "optim.betas[1] NaN"),
            ("train", "batch_size", "0", "train.batch_size"),
            ("train", "steps", "0", "train.steps"),
            (
                "train",
                "paired_fraction",
                "nan",
                "train.paired_fraction NaN",
            ),
            (
                "model.loss_weights",
                "mim",
                "-1.0",
                "model.loss_weights.mim -1",
            ),
            (
                "model.att_mim",
                "lambda1",
                "nan",
                "model.att_mim.lambda1 NaN",
            ),
            ("train.augment", "hflip", "inf", "train.augment.hflip inf"),
        ] {
            let text = format!("[{section}]\n{key} = {value}\n");
            let e = TrainConfig::parse(&text, Path::new("n.toml"))
                .expect_err(&format!("{section}.{key} = {value} was accepted"));
            assert!(
                e.to_string().contains("n.toml") && e.to_string().contains(named),
                "{section}.{key} = {value}: {e}"
            );
        }
        let e = TrainConfig::parse(
            "[model]\nmlm = { kind = \"random\", p = nan }\n",
            Path::new("m.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("model.mlm.p NaN"), "{e}");
    }
}
