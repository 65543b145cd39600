"""PyTorch reference of one MMCLIP training step, for parity with
``Mmclip::step`` in ``crates/model`` (``crates/model/tests/step_parity.rs``).

Written from ``docs/METHOD.md`` and the upstream sources, not from the Rust:

- encoders, projections, logit scale: transformers' ``CLIPModel`` (eager
  attention), loaded from the ``clip.*`` weights with the prefix stripped;
  E_img is the projection of ``post_layernorm`` of the patch tokens, as
  ``make_golden.py`` pins it; E_report / E_prompt the projection of every
  text token; pooled embeddings as ``CLIPModel`` pools them;
- Loss_align: ``CLIPModel(..., return_loss=True).loss`` on the paired rows
  (a second forward pass: same values, and the gradients add up the same);
- the visible-patch pass: MAE's ``forward_encoder`` (positions added, then
  the visible patches gathered, class token in front) on CLIP's modules;
- the pixel decoder, the text decoder, Loss_MIM: ``decoders_ref.py``
  (MAE's ``models_mae.py``), with MAE's numpy sin-cos positions rather than
  the ``decoder_pos_embed`` stored in the weights;
- mask selection: METHOD.md's AttMIM steps 1-4, with MAE's
  ``random_masking`` layout (argsort of a noise key, ``ids_restore``);
  EntMLM's selection: the ⌈λ3·n⌉ lowest-noise eligible positions.

The counts use exact decimal arithmetic: ⌈λ1·N⌉ and ⌈λ3·n⌉ rounded up,
round(λ2·N) rounded half up (Python's ``round`` would round half to even).

With ``--autocast bf16`` the forward pass (steps 1-6) runs under
``torch.autocast(DEVICE, dtype=torch.bfloat16)`` and the backward pass
outside it, as PyTorch's mixed-precision recipe does. ``--device cuda``
runs the step on the GPU (every tensor it makes goes there by default);
the outputs are written from the CPU either way. When the inputs hold
``given_candidates`` [B,N], the step masks from that candidate set M_b
instead of its own (the output ``candidates`` stays its own).

Usage: python mmclip_ref.py DIR [--phase joint|warm-up] [--autocast bf16] [--device cpu|cuda]
  DIR/weights.safetensors  the Rust VarStore: ``clip.*`` (HF CLIPModel names but
                           the fused ``qkv_proj``, split on loading),
                           ``mim_decoder.*`` (MAE names), ``mlm.mask_embedding``,
                           ``mlm.decoder.*``
  DIR/inputs.safetensors   pixels [B,3,H,W], input_ids [P,L], entity [P,L],
                           prompt_ids [Pr,L], att_noise [B,N], mlm_noise [P,L]
  DIR/config.json          the serde JSON of ``MmclipConfig``
  writes DIR/outputs.safetensors: loss_align (joint phase only), loss_mim,
  loss_mlm (when a token is selected), loss_total, candidates [B,N] uint8,
  mask [B,N], mlm_selected [P,L] uint8, grad_norm.<group> and
  param_grad_norm.<variable> (float64, 0 where a parameter got no gradient)
"""

import argparse
import json
import math
import os
import sys
from fractions import Fraction
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPConfig, CLIPModel  # noqa: E402

import decoders_ref  # noqa: E402

GROUPS = ("vision", "text", "projection", "mim_decoder", "mlm")


def group_of(name):
    """Parameter group of a variable name (the Rust test groups the same way)."""
    if name.startswith("clip.vision_model."):
        return "vision"
    if name.startswith("clip.text_model."):
        return "text"
    if name.startswith(("clip.visual_projection.", "clip.text_projection.")) or name == "clip.logit_scale":
        return "projection"
    if name.startswith("mim_decoder."):
        return "mim_decoder"
    if name.startswith("mlm."):
        return "mlm"
    raise ValueError(f"no group for {name}")


# --- counts, exactly ---
def _exact(x):
    return Fraction(repr(float(x)))


def ceil_of(fraction, n):
    """⌈fraction·n⌉ without float noise."""
    return math.ceil(_exact(fraction) * n)


def round_half_up(fraction, n):
    """round(fraction·n), halves rounded up."""
    return math.floor(_exact(fraction) * n + Fraction(1, 2))


# --- encoders (transformers' CLIPModel) ---
def build_clip(cfg, weights):
    v, t = cfg["clip"]["vision"], cfg["clip"]["text"]
    eos = t["eos_token_id"]
    if eos == 2:
        raise ValueError("eos_token_id 2 means argmax pooling in transformers; not representable")
    text = {k: t[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads", "max_position_embeddings", "layer_norm_eps")}
    # eos_token_id 2 selects transformers' legacy pooling at argmax(input_ids).
    text.update(hidden_act="quick_gelu", eos_token_id=2 if eos is None else eos, bos_token_id=0, pad_token_id=1)
    vision = {k: v[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                 "image_size", "patch_size", "num_channels", "layer_norm_eps")}
    vision.update(hidden_act="quick_gelu")
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg["clip"]["projection_dim"],
                        logit_scale_init_value=cfg["clip"]["logit_scale_init_value"])
    config._attn_implementation = "eager"
    model = CLIPModel(config)
    state = {k[len("clip."):]: w for k, w in weights.items() if k.startswith("clip.")}
    model.load_state_dict(state, strict=True)
    return model.train()


def eot_positions(cfg, ids):
    eos = cfg["clip"]["text"]["eos_token_id"]
    return ids.argmax(-1) if eos is None else (ids == eos).int().argmax(-1)


def real_tokens(cfg, ids, with_start):
    """[B, L] bool: positions up to end-of-text (from 1 without the start token)."""
    pos = torch.arange(ids.shape[1]).unsqueeze(0)
    upto = pos <= eot_positions(cfg, ids).unsqueeze(1)
    return upto if with_start else upto & (pos >= 1)


def encode_image(model, pixels):
    """Pooled [B, C] and E_img [B, N, C]."""
    out = model.vision_model(pixel_values=pixels)
    tokens = model.vision_model.post_layernorm(out.last_hidden_state[:, 1:])
    return model.visual_projection(out.pooler_output), model.visual_projection(tokens)


def encode_text(model, ids):
    """Pooled [B, C] and per-token features [B, L, C]."""
    out = model.text_model(input_ids=ids)
    return model.text_projection(out.pooler_output), model.text_projection(out.last_hidden_state)


def masked_text_hidden(model, ids, selected, mask_embedding):
    """The text encoder's last hidden state [P, L, D] with the token
    embedding at `selected` swapped for `mask_embedding` (EntMLM's masked
    report; CLIP's vocabulary has no mask token)."""

    def swap(_module, _inputs, out):
        return torch.where(selected.unsqueeze(-1), mask_embedding, out)

    hook = model.text_model.embeddings.token_embedding.register_forward_hook(swap)
    try:
        return model.text_model(input_ids=ids).last_hidden_state
    finally:
        hook.remove()


def encode_visible(model, pixels, ids_keep):
    """MAE's forward_encoder on CLIP's ViT: [B, 1 + K, D], class token first."""
    vm = model.vision_model
    x = vm.embeddings(pixel_values=pixels)  # [B, 1 + N, D], positions added
    d = x.shape[-1]
    visible = torch.gather(x[:, 1:], 1, ids_keep.unsqueeze(-1).repeat(1, 1, d))
    x = torch.cat([x[:, :1], visible], dim=1)
    x = vm.encoder(inputs_embeds=vm.pre_layrnorm(x)).last_hidden_state
    return vm.post_layernorm(x)


def prompt_features(cfg, model, prompt_ids):
    """E_prompt without gradient: [Pr, C] pooled or [M, C] every real token."""
    with torch.no_grad():
        pooled, tokens = encode_text(model, prompt_ids)
    if cfg["prompt_features"] == "pooled":
        return pooled
    return tokens[real_tokens(cfg, prompt_ids, True)]


# --- AttMIM (METHOD.md, steps 1-4) ---
def attention_map(e_img, e_ctx, ctx_valid=None):
    """A = softmax(E_img E_ctxᵀ / √C) · E_ctx; `e_ctx` [B, M, C]."""
    logits = e_img @ e_ctx.transpose(1, 2) / math.sqrt(e_img.shape[-1])
    if ctx_valid is not None:
        logits = logits.masked_fill(~ctx_valid.unsqueeze(1), float("-inf"))
    return logits.softmax(-1) @ e_ctx


def top_patches(a, att):
    """M(A, λ1): the ⌈λ1·N⌉ patches with the highest row score."""
    scores = a.norm(dim=-1) if att["score"] == "norm" else a.mean(dim=-1)
    b, n = scores.shape
    marks = torch.zeros(b, n, dtype=torch.bool)
    k = ceil_of(att["lambda1"], n)
    marks.scatter_(1, scores.topk(k, dim=-1).indices, True)
    return marks


def candidates(cfg, e_img, report, e_prompt, paired_rows):
    """M_b: the union of the strategy's maps; unpaired rows have no A_r.
    `report`: (E_report [P, L, C], valid [P, L]) or None."""
    att = cfg["att_mim"]
    b, n, _ = e_img.shape
    none = torch.zeros(b, n, dtype=torch.bool)

    def m_report():
        if report is None:
            return none
        e_r, valid = report
        out = none.clone()
        out[:paired_rows] = top_patches(attention_map(e_img[:paired_rows], e_r, valid), att)
        return out

    def m_prompt():
        ctx = e_prompt.unsqueeze(0).expand(b, -1, -1)
        return top_patches(attention_map(e_img, ctx), att)

    def m_image():
        return top_patches(attention_map(e_img, e_img), att)

    return {
        "random": lambda: none,
        "image-report": m_report,
        "prompt-driven": m_prompt,
        "image-self": m_image,
        "att-mim": lambda: m_report() | m_prompt() | m_image(),
    }[att["strategy"]]()


def att_masking(cands, noise, lambda2):
    """MAE's random_masking with AttMIM's preference: round(λ2·N) patches
    masked, those with the lowest key noise + (not a candidate), so
    candidates go first and random among themselves, then random others.
    Returns (ids_keep [B, K], mask [B, N] with 1 = masked, ids_restore)."""
    b, n = noise.shape
    len_keep = n - round_half_up(lambda2, n)
    key = noise + (~cands).float()
    ids_shuffle = torch.argsort(key, dim=1, descending=True)  # kept (highest keys) first
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(b, n)
    mask[:, :len_keep] = 0
    return ids_keep, torch.gather(mask, 1, ids_restore), ids_restore


# --- EntMLM ---
def select_tokens(cfg, ids, entity, noise):
    """M_EntMLM: per row, the ⌈p·n⌉ eligible positions of lowest noise;
    eligible = entity ∧ 1 ≤ t ≤ end-of-text (Entity), or every such
    position (Random); Full takes all of them."""
    predictable = real_tokens(cfg, ids, False)
    strategy = cfg["mlm"]
    if strategy["kind"] == "full":
        return predictable
    eligible = predictable & entity if strategy["kind"] == "entity" else predictable
    selected = torch.zeros_like(eligible)
    for r in range(ids.shape[0]):
        positions = eligible[r].nonzero().squeeze(1)
        k = ceil_of(strategy["p"], len(positions))
        chosen = positions[noise[r, positions].argsort()[:k]]
        selected[r, chosen] = True
    return selected


# --- the step ---
def step(d, phase, autocast, device):
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast == "bf16"):
        out, params, total = forward(d, phase, device)
    total.backward()
    norms = {name: 0.0 if v.grad is None else v.grad.double().norm().item() for name, v in params.items()}
    # The Rust variables are fused where the weights file has a qkv_proj:
    # its gradient norm is the root sum of squares of its three parts'.
    with safe_open(d / "weights.safetensors", "pt") as f:
        fused = [k for k in f.keys() if k.rpartition(".")[0].endswith(".qkv_proj")]
    for name in fused:
        head, _, suffix = name.rpartition(".")
        prefix = head.rpartition(".")[0]
        parts = [norms.pop(f"{prefix}.{p}.{suffix}") for p in decoders_ref.QKV_PARTS]
        norms[name] = math.sqrt(sum(n**2 for n in parts))
    sq = dict.fromkeys(GROUPS, 0.0)
    for name, norm in norms.items():
        out[f"param_grad_norm.{name}"] = torch.tensor([norm], dtype=torch.float64)
        sq[group_of(name)] += norm**2
    for g, s in sq.items():
        out[f"grad_norm.{g}"] = torch.tensor([math.sqrt(s)], dtype=torch.float64)
    save_file({k: t.contiguous().cpu() for k, t in out.items()}, d / "outputs.safetensors")


def forward(d, phase, device):
    """The step's forward pass: its outputs (losses, masks, selection), the
    trainable parameters by name, and the weighted total loss."""
    cfg = json.loads((d / "config.json").read_text())
    weights = decoders_ref.split_qkv(load_file(d / "weights.safetensors", device=device))
    x = load_file(d / "inputs.safetensors", device=device)
    pixels, ids = x["pixels"], x["input_ids"]
    entity = x["entity"].bool()
    b, p = pixels.shape[0], ids.shape[0]

    model = build_clip(cfg, weights)
    params = {"clip." + k: v for k, v in model.named_parameters()}
    dec = {k: w.clone().requires_grad_(True) for k, w in weights.items() if not k.startswith("clip.")}
    mim_cfg = cfg["mim_decoder"]
    grid = cfg["clip"]["vision"]["image_size"] // cfg["clip"]["vision"]["patch_size"]
    pos = decoders_ref.get_2d_sincos_pos_embed(mim_cfg["hidden_size"], grid, cls_token=True)
    dec["mim_decoder.decoder_pos_embed"] = torch.from_numpy(pos).float().to(device)  # fixed, not trained
    params.update({k: v for k, v in dec.items() if v.requires_grad})
    text_dec = {"text_decoder." + k[len("mlm.decoder."):]: v for k, v in dec.items() if k.startswith("mlm.decoder.")}

    # 1-2: full encodings; E_prompt without gradient.
    image_pooled, e_img = encode_image(model, pixels)
    e_prompt = prompt_features(cfg, model, x["prompt_ids"])

    # 3: AttMIM's masks, without gradient.
    with torch.no_grad():
        report = (encode_text(model, ids)[1], real_tokens(cfg, ids, True)) if p > 0 else None
        own = candidates(cfg, e_img.detach(), report, e_prompt, p)
    # Under autocast the two sides' maps differ in the last bits, which can
    # swap patches at the top-λ1 boundary: the step then takes the caller's set.
    cands = x["given_candidates"].bool() if "given_candidates" in x else own
    ids_keep, mask, ids_restore = att_masking(cands, x["att_noise"], cfg["att_mim"]["lambda2"])

    # 4: Loss_MIM.
    if cfg["mim_mode"] == "input":
        latent = encode_visible(model, pixels, ids_keep)
    else:  # feature: the visible E_img tokens, the pooled embedding in the class slot
        c = e_img.shape[-1]
        visible = torch.gather(e_img, 1, ids_keep.unsqueeze(-1).repeat(1, 1, c))
        latent = torch.cat([image_pooled.unsqueeze(1), visible], dim=1)
    pred = decoders_ref.mim_decoder(dec, latent, ids_restore, mim_cfg["num_heads"], mim_cfg["num_layers"])
    losses = {"mim": decoders_ref.mim_loss(pixels, pred, mask, cfg["clip"]["vision"]["patch_size"],
                                           cfg["norm_pix_loss"])}

    # 5: Loss_MLM at the selected positions, no shift.
    selected = select_tokens(cfg, ids, entity, x["mlm_noise"]) if p > 0 else torch.zeros_like(entity)
    if selected.any():
        hidden = masked_text_hidden(model, ids, selected, dec["mlm.mask_embedding"])
        td = cfg["text_decoder"]
        logits = decoders_ref.text_decoder(text_dec, hidden, e_img[:p], td["num_heads"], td["num_layers"])
        losses["mlm"] = F.cross_entropy(logits[selected], ids[selected])

    # 6: Loss_align, joint phase only.
    if phase == "joint" and p > 0:
        losses["align"] = model(input_ids=ids, pixel_values=pixels[:p], return_loss=True).loss

    weight = cfg["loss_weights"]
    total = sum(weight[k] * v for k, v in losses.items())
    out = {f"loss_{k}": v.detach().float().reshape(1) for k, v in losses.items()}
    out.update(loss_total=total.detach().float().reshape(1), candidates=own.to(torch.uint8), mask=mask,
               mlm_selected=selected.to(torch.uint8))
    return out, params, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--phase", choices=("joint", "warm-up"), default="joint")
    parser.add_argument("--autocast", choices=("off", "bf16"), default="off")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)  # deterministic reductions, and a shared machine
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("mmclip_ref.py: --device cuda, but this torch sees no CUDA device")
    # Factory calls without a device (masks, positions, outputs) follow it.
    torch.set_default_device(args.device)
    step(args.dir, args.phase, args.autocast, args.device)


if __name__ == "__main__":
    main()
