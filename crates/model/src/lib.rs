//! The MMCLIP model in `tch`: CLIP ViT-B/16 image and text encoders with
//! Hugging Face `CLIPModel` variable names, weight loading, AttMIM mask
//! selection and the losses.
//!
//! [`Clip`] holds both encoders and is built from a [`ClipConfig`]
//! ([`ClipConfig::vit_b16`] is the paper's initialisation). Its named stages
//! return the pooled embedding and the per-token projected features that
//! AttMIM and EntMLM need ([`Encoded`]). [`load::load_clip_safetensors`]
//! fills it from a HF or OpenAI/open_clip safetensors file;
//! [`att_mim::att_mim_mask`] selects the masked patches in MAE's
//! `(ids_keep, mask, ids_restore)` layout; [`Clip::encode_image_visible`]
//! encodes the visible patches and [`mim::MimDecoder`] reconstructs the
//! masked ones; [`ent_mlm`] selects report tokens and decodes them;
//! [`losses`] holds Loss_align ([`losses::clip_loss`]), Loss_MIM
//! ([`losses::mim_loss`]) and Loss_MLM ([`losses::mlm_loss`]). [`Mmclip`]
//! ([`MmclipConfig`]) adds the decoders to CLIP and its
//! [`Mmclip::step`] is the training step that uses all of these.
//!
//! ```no_run
//! use model::{Clip, ClipConfig, load::load_clip_safetensors};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::cuda_if_available());
//! let clip = Clip::new(vs.root(), &ClipConfig::vit_b16());
//! load_clip_safetensors(&vs, "clip-vit-base-patch16/model.safetensors")?;
//! let pixels = Tensor::zeros([2, 3, 224, 224], (Kind::Float, vs.device()));
//! let image = clip.encode_image(&pixels); // pooled [2, 512], tokens [2, 196, 512]
//! # Ok::<(), model::load::LoadError>(())
//! ```
#![deny(missing_docs)]

pub mod att_mim;
pub mod attention;
pub mod autocast;
pub mod cast;
pub mod clip;
pub mod config;
pub mod dist;
pub mod ent_mlm;
pub mod fused;
pub mod graph;
pub mod load;
pub mod losses;
pub mod mim;
pub mod mmclip;
pub mod op_count;
mod shim;
pub mod text;
pub mod transfer;
pub mod vision;

pub use clip::{Clip, Encoded};
pub use config::{ClipConfig, TextConfig, VisionConfig};
pub use mmclip::{Losses, Mmclip, MmclipConfig, Phase, StepBatch};

/// The `nn::Path` group (`p.set_group(NO_WEIGHT_DECAY)`) of the variables
/// that weight decay must leave alone although they are matrices: the token
/// and position embedding tables. Biases, norms and scalars need no group:
/// the optimiser decays only tensors of two or more dimensions.
pub const NO_WEIGHT_DECAY: usize = 1;

/// Whether libtorch sees a CUDA device (false when `libtorch_cuda` was not
/// linked; see `build.rs`).
pub fn cuda_available() -> bool {
    tch::Cuda::is_available()
}

/// Number of trainable scalars in a `VarStore`.
pub fn count_parameters(vs: &tch::nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn cuda_is_seen_when_a_gpu_is_present() {
        // A GPU machine exposes /dev/nvidia0; there libtorch_cuda must be
        // linked (build.rs) and CUDA must report available.
        if std::path::Path::new("/dev/nvidia0").exists() {
            assert!(
                super::cuda_available(),
                "a GPU is present but libtorch reports no CUDA"
            );
        }
    }
}
