//! Building the model for a run, and finding it again from a checkpoint.
//!
//! A run folder holds what it takes to rebuild its model without the
//! original config: `run.json` (the resolved [`MmclipConfig`] and the
//! prompts) and a copy of the tokenizer (`tokenizer.json`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use model::{Clip, ClipConfig, Mmclip, MmclipConfig};
use pipeline::CONTEXT;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor, nn::VarStore};
use text::tokenize::ClipTokenizer;

/// `RUN/run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunModel {
    /// The model's full configuration.
    pub mmclip: MmclipConfig,
    /// AttMIM's prompts, in order.
    pub prompts: Vec<String>,
    /// The shard folders of the latest start, with their manifests' sha256
    /// (each checkpoint's `state.json` records those its weights saw).
    #[serde(default)]
    pub shards: Vec<crate::data::ShardRecord>,
}

/// File names inside a run folder.
pub const RUN_FILE: &str = "run.json";
/// The tokenizer copy inside a run folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A model ready to use: its variables, the module, the tokenizer.
pub struct Session {
    /// The variables (`clip.*`, `mim_decoder.*`, `mlm.*`).
    pub vs: VarStore,
    /// The model.
    pub model: Mmclip,
    /// Its configuration and prompts.
    pub run: RunModel,
    /// The tokenizer its texts are encoded with.
    pub tokenizer: ClipTokenizer,
}

impl Session {
    /// A freshly initialised model (seeded by `tch::manual_seed` before).
    pub fn new(run: RunModel, tokenizer: ClipTokenizer, device: Device) -> Result<Session> {
        let vs = VarStore::new(device);
        let prompts = tokenize(&tokenizer, &run.prompts)?;
        let model = Mmclip::new(vs.root(), &run.mmclip, prompts);
        Ok(Session {
            vs,
            model,
            run,
            tokenizer,
        })
    }

    /// The model of a checkpoint folder (`RUN/checkpoints/step-N`) or of a
    /// run folder (its latest checkpoint), with its weights.
    pub fn from_checkpoint(path: &Path, device: Device) -> Result<Session> {
        let (run_dir, ckpt) = locate(path)?;
        let run: RunModel = serde_json::from_str(
            &std::fs::read_to_string(run_dir.join(RUN_FILE)).with_context(|| {
                format!("{}: no {RUN_FILE}; not a training run", run_dir.display())
            })?,
        )
        .with_context(|| format!("{}: unreadable", run_dir.join(RUN_FILE).display()))?;
        let tokenizer = ClipTokenizer::from_file(&run_dir.join(TOKENIZER_FILE))?;
        let mut session = Session::new(run, tokenizer, device)?;
        crate::checkpoint::load_weights(&ckpt, &mut session.vs)?;
        Ok(session)
    }

    /// Token ids `[n, 77]` of `texts` (CLIP truncation).
    pub fn tokenize(&self, texts: &[String]) -> Result<Tensor> {
        Ok(tokenize(&self.tokenizer, texts)?.to_device(self.vs.device()))
    }
}

/// (run folder, checkpoint folder) of a checkpoint or run path.
pub fn locate(path: &Path) -> Result<(PathBuf, PathBuf)> {
    if path.join(RUN_FILE).exists() {
        let Some((_, latest)) = crate::checkpoint::list(path)?.pop() else {
            bail!("{}: the run has no checkpoint yet", path.display());
        };
        return Ok((path.to_owned(), latest));
    }
    let run = path
        .parent()
        .and_then(Path::parent)
        .filter(|r| r.join(RUN_FILE).exists());
    match run {
        Some(run) => Ok((run.to_owned(), path.to_owned())),
        None => bail!(
            "{}: neither a run folder nor a checkpoint inside one (no {RUN_FILE})",
            path.display()
        ),
    }
}

/// Token ids `[n, 77]`, zero-padded, on the CPU.
pub fn tokenize(tokenizer: &ClipTokenizer, texts: &[String]) -> Result<Tensor> {
    let mut ids = vec![0i64; texts.len() * CONTEXT];
    for (row, text) in texts.iter().enumerate() {
        let t = tokenizer
            .encode_text(text)
            .with_context(|| format!("tokenizing {text:?}"))?;
        for (i, id) in t.ids.iter().enumerate() {
            ids[row * CONTEXT + i] = *id as i64;
        }
    }
    Ok(Tensor::from_slice(&ids).view([texts.len() as i64, CONTEXT as i64]))
}

/// CLIP encoders from either kind of weights: a training run (or one of its
/// checkpoints), or a Hugging Face `CLIPModel` folder (`config.json`,
/// `model.safetensors`, and `tokenizer.json` when texts are encoded).
// One value per command: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Weights {
    /// A run's model.
    Run(Session),
    /// A Hugging Face folder's model, its variables under the HF names.
    Hf {
        /// The variables.
        vs: VarStore,
        /// The model.
        clip: Clip,
        /// Its configuration.
        cfg: ClipConfig,
        /// The tokenizer, or why there is none.
        tokenizer: std::result::Result<ClipTokenizer, String>,
    },
}

impl Weights {
    /// Opens a run, a checkpoint or a Hugging Face folder; `tokenizer`
    /// replaces a Hugging Face folder's own `tokenizer.json`.
    pub fn open(path: &Path, tokenizer: Option<&Path>, device: Device) -> Result<Weights> {
        if locate(path).is_ok() {
            return Ok(Weights::Run(Session::from_checkpoint(path, device)?));
        }
        if !path.join("config.json").exists() {
            bail!(
                "{}: neither a training run, a checkpoint, nor a Hugging Face CLIPModel folder",
                path.display()
            );
        }
        let cfg = crate::hf::read_config(path)?;
        let vs = VarStore::new(device);
        let clip = Clip::new(vs.root(), &cfg);
        model::load::load_clip_safetensors(&vs, path.join("model.safetensors"))?;
        let tok_path = tokenizer
            .map(Path::to_path_buf)
            .unwrap_or_else(|| path.join(TOKENIZER_FILE));
        let tokenizer = ClipTokenizer::from_file(&tok_path).map_err(|e| {
            format!(
                "{}: {e:#}; pass --tokenizer for a folder without tokenizer.json",
                path.display()
            )
        });
        Ok(Weights::Hf {
            vs,
            clip,
            cfg,
            tokenizer,
        })
    }

    /// The CLIP model and its configuration.
    pub fn clip(&self) -> (&Clip, &ClipConfig) {
        match self {
            Weights::Run(s) => (&s.model.clip, &s.run.mmclip.clip),
            Weights::Hf { clip, cfg, .. } => (clip, cfg),
        }
    }

    /// The variables.
    pub fn vs(&self) -> &VarStore {
        match self {
            Weights::Run(s) => &s.vs,
            Weights::Hf { vs, .. } => vs,
        }
    }

    /// The tokenizer; an error for a Hugging Face folder without one.
    pub fn tokenizer(&self) -> Result<&ClipTokenizer> {
        match self {
            Weights::Run(s) => Ok(&s.tokenizer),
            Weights::Hf { tokenizer, .. } => tokenizer.as_ref().map_err(|e| anyhow::anyhow!("{e}")),
        }
    }

    /// Variable-name prefixes of the image encoder (its transformer and
    /// projection), under which fine-tuning trains.
    pub fn image_prefixes(&self) -> [&'static str; 2] {
        match self {
            Weights::Run(_) => ["clip.vision_model.", "clip.visual_projection."],
            Weights::Hf { .. } => ["vision_model.", "visual_projection."],
        }
    }
}
