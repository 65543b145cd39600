use super::*;
use tch::Device;

const B: i64 = 4;
const P: i64 = 3;
const L: i64 = 16;

/// A tiny model and a mixed batch: 3 paired rows with reports of 6, 9 and
/// 12 tokens (end-of-text = 99) and entities, 1 unpaired row.
fn setup(cfg: &MmclipConfig) -> (nn::VarStore, Mmclip, StepBatch) {
    // libtorch's generator is global and the tests run on parallel threads:
    // the lock keeps each test's draws its own, so a failure reproduces.
    static DRAWS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _draws = DRAWS.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let prompts = token_rows(&[4, 5, 3]);
    let model = Mmclip::new(vs.root(), cfg, prompts);
    let pixels = Tensor::randn([B, 3, 32, 32], (Kind::Float, Device::Cpu));
    let input_ids = token_rows(&[6, 9, 12]);
    let pos = Tensor::arange(L, (Kind::Int64, Device::Cpu)).unsqueeze(0);
    let entity = pos.ge(2).logical_and(&pos.le(6)).expand([P, L], true);
    (
        vs,
        model,
        StepBatch {
            pixels,
            input_ids,
            entity,
        },
    )
}

/// Token rows `[start = 1, random…, end-of-text = 99, 0…]` of the given lengths.
fn token_rows(lengths: &[i64]) -> Tensor {
    let rows: Vec<Tensor> = lengths
        .iter()
        .map(|&n| {
            let ids = Tensor::randint_low(2, 98, [L], (Kind::Int64, Device::Cpu));
            let _ = ids.narrow(0, 0, 1).fill_(1);
            let _ = ids.narrow(0, n - 1, 1).fill_(99);
            let _ = ids.narrow(0, n, L - n).fill_(0);
            ids
        })
        .collect();
    Tensor::stack(&rows, 0)
}

fn value(t: &Tensor) -> f64 {
    t.double_value(&[])
}

#[test]
fn joint_step_returns_three_finite_losses_and_warm_up_two() {
    let (_vs, model, batch) = setup(&MmclipConfig::tiny());
    let (joint, _) = model.step(&batch, Phase::Joint, 1);
    let (align, mlm) = (joint.align.as_ref().unwrap(), joint.mlm.as_ref().unwrap());
    for l in [align, &joint.mim, mlm, &joint.total] {
        assert!(value(l).is_finite() && value(l) > 0.0, "{l}");
    }
    let sum = value(align) + value(&joint.mim) + value(mlm);
    assert!((value(&joint.total) - sum).abs() < 1e-5 * sum);
    let (warm, _) = model.step(&batch, Phase::WarmUp, 1);
    assert!(warm.align.is_none());
    // Same masks, same MIM and MLM values.
    assert!((value(&warm.mim) - value(&joint.mim)).abs() < 1e-6);
    assert!((value(warm.mlm.as_ref().unwrap()) - value(mlm)).abs() < 1e-6);
}

#[test]
fn gradients_reach_every_trainable_parameter_in_the_joint_phase() {
    let (vs, model, batch) = setup(&MmclipConfig::tiny());
    model.step(&batch, Phase::Joint, 2).0.total.backward();
    for (name, var) in vs.variables() {
        if !var.requires_grad() {
            continue;
        }
        let g = var.grad();
        assert!(g.defined(), "{name} has no gradient");
        assert!(
            value(&g.abs().sum(Kind::Float)) > 0.0,
            "{name} has a zero gradient"
        );
    }
}

#[test]
fn warm_up_leaves_the_contrastive_parts_without_gradient() {
    let (vs, model, batch) = setup(&MmclipConfig::tiny());
    model.step(&batch, Phase::WarmUp, 2).0.total.backward();
    let vars = vs.variables();
    for name in ["clip.logit_scale", "clip.text_projection.weight"] {
        let g = vars[name].grad();
        assert!(
            !g.defined() || value(&g.abs().sum(Kind::Float)) == 0.0,
            "{name}"
        );
    }
    let g = vars["clip.vision_model.encoder.layers.0.mlp.fc1.weight"].grad();
    assert!(value(&g.abs().sum(Kind::Float)) > 0.0);
}

#[test]
fn masks_are_exact_seeded_and_mlm_stays_inside_entities() {
    let (_vs, model, batch) = setup(&MmclipConfig::tiny());
    let (a, ta) = model.step(&batch, Phase::Joint, 11);
    let (b, tb) = model.step(&batch, Phase::Joint, 11);
    let (_, tc) = model.step(&batch, Phase::Joint, 12);
    assert_eq!(value(&a.total), value(&b.total));
    assert!(ta.mask.mask.equal(&tb.mask.mask));
    assert!(!ta.mask.mask.equal(&tc.mask.mask));
    // round(0.75 · 16) = 12 masked patches in every row, paired or not.
    let per_row = ta
        .mask
        .mask
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    assert_eq!(
        Vec::<f32>::try_from(&per_row).unwrap(),
        vec![12.0; B as usize]
    );
    // ⌈0.2 · 5⌉ = 1 entity token per paired row, inside the entity span.
    assert_eq!(ta.mlm_selected.size(), vec![P, L]);
    let counts = ta
        .mlm_selected
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Int64);
    assert_eq!(Vec::<i64>::try_from(&counts).unwrap(), vec![1, 1, 1]);
    let outside = ta.mlm_selected.logical_and(&batch.entity.logical_not());
    assert_eq!(outside.any().int64_value(&[]), 0);
}

#[test]
fn an_unpaired_only_batch_trains_mim_alone() {
    let (_vs, model, batch) = setup(&MmclipConfig::tiny());
    let images_only = StepBatch {
        pixels: batch.pixels.shallow_clone(),
        input_ids: batch.input_ids.narrow(0, 0, 0),
        entity: batch.entity.narrow(0, 0, 0),
    };
    let (losses, trace) = model.step(&images_only, Phase::Joint, 3);
    assert!(losses.align.is_none() && losses.mlm.is_none());
    assert_eq!(value(&losses.total), value(&losses.mim));
    assert_eq!(trace.mask.mask.size(), vec![B, 16]);
}

#[test]
fn unpaired_rows_do_not_see_the_reports() {
    // Changing the paired rows' reports must leave the unpaired row's mask alone.
    let (_vs, model, batch) = setup(&MmclipConfig::tiny());
    let (_, t1) = model.step(&batch, Phase::Joint, 5);
    let other = StepBatch {
        input_ids: token_rows(&[10, 4, 7]),
        pixels: batch.pixels.shallow_clone(),
        entity: batch.entity.shallow_clone(),
    };
    let (_, t2) = model.step(&other, Phase::Joint, 5);
    assert!(t1.candidates.get(P).equal(&t2.candidates.get(P)));
    assert!(t1.mask.mask.get(P).equal(&t2.mask.mask.get(P)));
}

#[test]
fn feature_mode_and_token_prompts_run_with_the_resolved_widths() {
    let cfg = MmclipConfig {
        mim_mode: MimMode::Feature,
        prompt_features: PromptFeatures::Tokens,
        ..MmclipConfig::tiny()
    };
    assert_eq!(cfg.mim_decoder_dims().in_dim, cfg.clip.projection_dim);
    let (vs, model, batch) = setup(&cfg);
    // Prompt tokens: 4 + 5 + 3 real tokens.
    assert_eq!(
        model.prompt_features().size(),
        vec![12, cfg.clip.projection_dim]
    );
    let (losses, _) = model.step(&batch, Phase::Joint, 4);
    losses.total.backward();
    assert!(value(&losses.mim).is_finite());
    // No second encoder pass: the decoder embeds C-wide tokens.
    let w = &vs.variables()["mim_decoder.decoder_embed.weight"];
    assert_eq!(w.size()[1], cfg.clip.projection_dim);
}

#[test]
fn the_mask_embedding_replaces_the_selected_tokens() {
    let (_vs, model, batch) = setup(&MmclipConfig::tiny());
    let none = Tensor::zeros([P, L], (Kind::Bool, Device::Cpu));
    let masked_none = model
        .clip
        .text_hidden_masked(&batch.input_ids, &none, &model.mask_embedding);
    // Unprojected states equal the plain encoder's when nothing is selected…
    let (_, hidden) = model.clip.text_model().forward(&batch.input_ids);
    assert!(masked_none.allclose(&hidden, 1e-6, 1e-6, false));
    // …and change after the selected position (causal), not before.
    let sel = Tensor::zeros([P, L], (Kind::Bool, Device::Cpu));
    let _ = sel.narrow(1, 3, 1).fill_(1);
    let masked = model
        .clip
        .text_hidden_masked(&batch.input_ids, &sel, &model.mask_embedding);
    assert!(
        masked
            .narrow(1, 0, 3)
            .allclose(&hidden.narrow(1, 0, 3), 1e-6, 1e-6, false)
    );
    assert!(
        !masked
            .narrow(1, 3, 1)
            .allclose(&hidden.narrow(1, 3, 1), 1e-4, 1e-4, false)
    );
}

#[test]
fn padding_columns_change_neither_the_selection_nor_the_losses() {
    let (_vs, model, batch) = setup(&MmclipConfig::tiny());
    // The longest report has 12 tokens: 13 columns or the full context of 16.
    let narrow = StepBatch {
        pixels: batch.pixels.shallow_clone(),
        input_ids: batch.input_ids.narrow(1, 0, 13),
        entity: batch.entity.narrow(1, 0, 13),
    };
    let wide = batch;
    let (a, ta) = model.step(&narrow, Phase::Joint, 9);
    let (b, tb) = model.step(&wide, Phase::Joint, 9);
    assert!(ta.mask.mask.equal(&tb.mask.mask));
    assert!(ta.mlm_selected.equal(&tb.mlm_selected.narrow(1, 0, 13)));
    for (x, y) in [(&a.total, &b.total), (&a.mim, &b.mim)] {
        assert!(
            (value(x) - value(y)).abs() < 1e-5 * value(x).abs(),
            "{x} vs {y}"
        );
    }
}

#[test]
fn the_config_holds_only_what_can_be_set_and_reads_older_files() {
    let cfg = MmclipConfig::tiny();
    let json = serde_json::to_value(&cfg).unwrap();
    for (section, derived) in [
        (
            "mim_decoder",
            ["in_dim", "grid_size", "patch_size", "num_channels"].as_slice(),
        ),
        (
            "text_decoder",
            ["hidden_size", "image_dim", "vocab_size"].as_slice(),
        ),
    ] {
        for key in derived {
            assert!(
                json[section].get(key).is_none(),
                "{section}.{key} is stored"
            );
        }
    }
    // An older run.json also wrote the derived sizes (values never used,
    // here wrong on purpose); it reads back as the same configuration.
    let mut older = json.clone();
    older["mim_decoder"]["in_dim"] = 999.into();
    older["mim_decoder"]["grid_size"] = 7.into();
    older["text_decoder"]["vocab_size"] = 3.into();
    older["text_decoder"]["hidden_size"] = 5.into();
    let read: MmclipConfig = serde_json::from_value(older).unwrap();
    assert_eq!(read, cfg);
    // The derived sizes follow the encoders.
    let dims = read.mim_decoder_dims();
    assert_eq!(
        (dims.in_dim, dims.grid_size, dims.patch_size),
        (cfg.clip.vision.hidden_size, 4, 8)
    );
    let text = read.text_decoder_dims();
    assert_eq!(
        (text.hidden_size, text.image_dim, text.vocab_size),
        (32, 24, 100)
    );
}

/// A CUDA graph captures the step only if the host never waits for the
/// device inside it: no value read back, no data-dependent size, in any
/// of the modes the configuration offers (the prompts' token positions
/// are found once, when the model is built).
#[test]
fn a_step_from_its_draws_never_waits_for_the_device() {
    for (mim_mode, prompt_features) in [
        (MimMode::Input, PromptFeatures::Pooled),
        (MimMode::Input, PromptFeatures::Tokens),
        (MimMode::Feature, PromptFeatures::Tokens),
    ] {
        let cfg = MmclipConfig {
            mim_mode,
            prompt_features,
            ..MmclipConfig::tiny()
        };
        let (_vs, model, batch) = setup(&cfg);
        let noise = model.step_noise(&batch, 3, None, Device::Cpu);
        for phase in [Phase::WarmUp, Phase::Joint] {
            let (_, counts) = crate::op_count::count_syncs(|| {
                let (losses, _) = model.step_with_noise(&batch, phase, &noise, None).unwrap();
                losses.total.backward();
            });
            assert!(counts.ops > 100, "{counts:?}");
            assert_eq!(
                counts.syncs, 0,
                "{mim_mode:?}, {prompt_features:?}, {phase:?}: {counts:?}"
            );
        }
    }
}

/// Under bfloat16 autocast, the weights cast in groups once per step give
/// the losses and gradients of autocast's cast per weight, bit for bit, in
/// both phases (the warm-up leaves some weights without a gradient), with
/// fewer kernels from the second step on.
#[test]
fn weights_cast_in_groups_give_autocasts_losses_and_gradients_exactly() {
    use crate::autocast::{Reduced, autocast};
    let _serial = crate::autocast::serial();
    let cfg = MmclipConfig::tiny();
    let (vs_plain, plain, batch) = setup(&cfg);
    plain.weight_casts().set_enabled(false);
    // The same weights and prompts (other tests draw from the global
    // generator meanwhile).
    let mut vs_grouped = nn::VarStore::new(Device::Cpu);
    let grouped = Mmclip::new(vs_grouped.root(), &cfg, plain.prompt_ids().shallow_clone());
    vs_grouped.copy(&vs_plain).unwrap();
    let step = |model: &Mmclip, phase: Phase, seed: u64| {
        crate::op_count::count_syncs(|| {
            let losses = autocast(Device::Cpu, Some(Reduced::BFloat16), || {
                model.step(&batch, phase, seed).0
            });
            losses.total.backward();
            losses
        })
    };
    let bits = |t: &Tensor| Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap();
    let steps = [
        (Phase::WarmUp, 1),
        (Phase::WarmUp, 2),
        (Phase::Joint, 3),
        (Phase::Joint, 4),
    ];
    for (i, (phase, seed)) in steps.into_iter().enumerate() {
        let (a, plain_counts) = step(&plain, phase, seed);
        let (b, grouped_counts) = step(&grouped, phase, seed);
        for (x, y) in [(&a.total, &b.total), (&a.mim, &b.mim)] {
            assert_eq!(bits(x), bits(y), "step {i}: {x} against {y}");
        }
        if let (Some(x), Some(y)) = (&a.mlm, &b.mlm) {
            assert_eq!(bits(x), bits(y), "step {i}");
        }
        assert_eq!(a.align.is_some(), b.align.is_some());
        let grads = |vs: &nn::VarStore| -> Vec<(String, Option<Vec<f32>>)> {
            let mut v: Vec<_> = vs
                .variables()
                .into_iter()
                .map(|(name, var)| {
                    let g = var.grad();
                    (name, g.defined().then(|| bits(&g)))
                })
                .collect();
            v.sort_by(|x, y| x.0.cmp(&y.0));
            v
        };
        for ((name, x), (_, y)) in grads(&vs_plain).into_iter().zip(grads(&vs_grouped)) {
            assert_eq!(x.is_some(), y.is_some(), "step {i}: {name}'s gradient");
            assert!(x == y, "step {i}: {name}'s gradients differ");
        }
        // The first step records the weights; the later ones cast them in
        // groups, each with one list copy each way.
        if i == 0 {
            assert_eq!(plain_counts.kernels, grouped_counts.kernels);
        } else {
            let groups = grouped.weight_casts().groups();
            let weights: usize = groups.iter().sum();
            assert!(weights > 50, "{groups:?}");
            assert!(
                grouped_counts.kernels + weights as u64 <= plain_counts.kernels,
                "step {i}: {grouped_counts:?} against {plain_counts:?} ({weights} weights)"
            );
        }
        assert_eq!(grouped_counts.syncs, 0);
    }
    assert!(plain.weight_casts().groups().is_empty());
}
