//! MMCLIP-rs training: the `train` binary's pieces.
//!
//! [`fit`] runs pre-training over shard folders ([`data`]) with the
//! [`config`] of a TOML file, writing metrics and [`checkpoint`]s;
//! [`dist`] runs it data-parallel under torchrun or SLURM;
//! [`session`] rebuilds a model from a run; [`encode`] embeds images and
//! texts; [`zero_shot`] and [`linear_probe`] evaluate; [`hf`] reads and
//! writes Hugging Face `CLIPModel` folders; [`masks`] draws AttMIM's masks.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
pub mod embed;
pub mod encode;
pub mod finetune;
pub mod fit;
pub mod graph_step;
pub mod hf;
pub mod label_sets;
pub mod linear_probe;
pub mod masks;
pub mod optim;
pub mod prompts;
pub mod report;
pub mod session;
pub mod zero_shot;
