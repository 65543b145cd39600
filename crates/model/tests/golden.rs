//! Golden tests against PyTorch references, run through the project venv.
//!
//! Encoders: `python/model_ref/make_golden.py` builds a tiny random
//! CLIPModel with `transformers`, writes its weights (HF and OpenAI naming)
//! and its outputs for fixed inputs; the Rust model loads each weight file.
//! Decoders and losses: the Rust side saves random decoder weights and
//! inputs, `python/model_ref/decoders_ref.py` (written from MAE's code)
//! computes the outputs. Everything must agree in float32 within 1e-5,
//! relative to the largest reference magnitude.

mod common;

use std::collections::HashMap;
use std::path::Path;

use model::att_mim::{mask_noise, select_mask};
use model::ent_mlm::{Slots, TextDecoder, TextDecoderConfig, TextDecoderDims, slots};
use model::load::load_clip_safetensors;
use model::losses::{mim_loss, mlm_loss};
use model::mim::{MimDecoder, MimDecoderConfig, MimDecoderDims, patchify};
use model::{Clip, ClipConfig, VisionConfig};
use tch::{Device, Kind, Tensor, nn};

const TOLERANCE: f64 = 1e-5;

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

/// max |got − want| / max |want|.
fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size());
    let diff = (got - want).abs().max().double_value(&[]);
    diff / want.abs().max().double_value(&[])
}

fn check_weights(weights: &str) {
    let dir = tempfile::tempdir().unwrap();
    common::run_reference("make_golden.py", dir.path(), &[]);
    let g = read(&dir.path().join("golden.safetensors"));
    let vs = nn::VarStore::new(Device::Cpu);
    let clip = Clip::new(vs.root(), &ClipConfig::tiny());
    load_clip_safetensors(&vs, dir.path().join(weights)).unwrap();

    let image = clip.encode_image(&g["pixel_values"]);
    let text = clip.encode_text(&g["input_ids"]);
    let errs = [
        ("image_embeds", rel_err(&image.pooled, &g["image_embeds"])),
        ("image_tokens", rel_err(&image.tokens, &g["image_tokens"])),
        ("text_embeds", rel_err(&text.pooled, &g["text_embeds"])),
        ("text_tokens", rel_err(&text.tokens, &g["text_tokens"])),
        (
            "logit_scale",
            rel_err(&clip.logit_scale().reshape([1]), &g["logit_scale"]),
        ),
    ];
    eprintln!("{weights}: relative errors {errs:?}");
    for (name, err) in errs {
        assert!(
            err <= TOLERANCE,
            "{weights}: {name} differs from transformers by {err:e} (> {TOLERANCE:e})"
        );
    }
    // The script puts end-of-text at positions 5, 15 and 0.
    let eot = clip.text_model().eot_positions(&g["input_ids"]);
    assert_eq!(Vec::<i64>::try_from(&eot).unwrap(), vec![5, 15, 0]);
}

#[test]
fn hf_weights_reproduce_transformers_clip_embeddings() {
    check_weights("model.safetensors");
}

#[test]
fn openai_named_weights_reproduce_transformers_clip_embeddings() {
    check_weights("model_openai.safetensors");
}

#[test]
fn decoders_and_losses_match_the_pytorch_reference() {
    let dir = tempfile::tempdir().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let mcfg = MimDecoderConfig {
        num_layers: 2,
        ..MimDecoderConfig::tiny()
    };
    let mdims = MimDecoderDims::of(&VisionConfig::tiny(), 32);
    let tcfg = TextDecoderConfig {
        num_layers: 3,
        num_heads: 4,
        intermediate_size: 32,
    };
    let tdims = TextDecoderDims {
        hidden_size: 16,
        image_dim: 24,
        vocab_size: 50,
    };
    let mim = MimDecoder::new(vs.root() / "mim_decoder", &mcfg, mdims);
    let txt = TextDecoder::new(vs.root() / "text_decoder", &tcfg, tdims);
    tch::manual_seed(5);
    // Perturb every trainable weight (LayerNorms start at 1/0) so a swapped
    // or misnamed parameter shows.
    tch::no_grad(|| {
        for mut t in vs.trainable_variables() {
            let noise = t.randn_like() * 0.05;
            t += noise;
        }
    });
    vs.save(dir.path().join("weights.safetensors")).unwrap();

    let (b, n, keep) = (3, 16, 4);
    let noise = mask_noise(b, n, 2, Device::Cpu);
    let sel = select_mask(&noise.lt(0.5), &noise, 0.75);
    let f = (Kind::Float, Device::Cpu);
    let latent = Tensor::randn([b, 1 + keep, mdims.in_dim], f);
    let imgs = Tensor::randn([b, 3, 32, 32], f);
    let text = Tensor::randn([b, 7, 16], f);
    let image = Tensor::randn([b, n, 24], f);
    let targets = Tensor::randint(50, [b, 7], (Kind::Int64, Device::Cpu));
    let selected = mask_noise(b, 7, 3, Device::Cpu).lt(0.4);
    let int = |v: i64| Tensor::from_slice(&[v]);
    let inputs = [
        ("latent", latent.shallow_clone()),
        ("ids_restore", sel.ids_restore.shallow_clone()),
        ("imgs", imgs.shallow_clone()),
        ("mask", sel.mask.shallow_clone()),
        ("text", text.shallow_clone()),
        ("image", image.shallow_clone()),
        ("targets", targets.shallow_clone()),
        ("selected", selected.to_kind(Kind::Uint8)),
        ("mim_heads", int(mcfg.num_heads)),
        ("mim_layers", int(mcfg.num_layers)),
        ("patch", int(mdims.patch_size)),
        ("grid", int(mdims.grid_size)),
        ("txt_heads", int(tcfg.num_heads)),
        ("txt_layers", int(tcfg.num_layers)),
    ];
    Tensor::write_safetensors(&inputs, dir.path().join("inputs.safetensors")).unwrap();
    common::run_reference("decoders_ref.py", dir.path(), &[]);
    let r = read(&dir.path().join("outputs.safetensors"));

    let pred = mim.forward(&latent, &sel.ids_restore);
    let target = patchify(&imgs, mdims.patch_size);
    let logits = txt.forward(&text, &image);
    let pos = vs.variables()["mim_decoder.decoder_pos_embed"].shallow_clone();
    let errs = [
        ("pos_embed", rel_err(&pos, &r["pos_embed"])),
        ("pred", rel_err(&pred, &r["pred"])),
        (
            "mim_loss",
            rel_err(
                &mim_loss(&target, &pred, &sel.mask, true).reshape([1]),
                &r["mim_loss"],
            ),
        ),
        (
            "mim_loss_raw",
            rel_err(
                &mim_loss(&target, &pred, &sel.mask, false).reshape([1]),
                &r["mim_loss_raw"],
            ),
        ),
        ("logits", rel_err(&logits, &r["logits"])),
        (
            "mlm_loss",
            rel_err(
                &{
                    let slots = slots(&selected, selected.size()[1]);
                    let count = selected.sum(Kind::Float);
                    mlm_loss(&at_slots(&logits, &slots), &targets, &slots, &count).reshape([1])
                },
                &r["mlm_loss"],
            ),
        ),
    ];
    eprintln!("decoders: relative errors {errs:?}");
    for (name, err) in errs {
        assert!(
            err <= TOLERANCE,
            "{name} differs from the PyTorch reference by {err:e} (> {TOLERANCE:e})"
        );
    }
}

/// The rows of `xs: [B, L, V]` at the slots' positions, `[B·K, V]` in
/// row-major order, as `TextDecoder::forward_selected` returns them.
fn at_slots(xs: &Tensor, slots: &Slots) -> Tensor {
    let (b, _, v) = xs.size3().unwrap();
    let k = slots.index.size()[1];
    xs.gather(
        1,
        &slots.index.unsqueeze(-1).expand([b, k, v], false),
        false,
    )
    .reshape([-1, v])
}
