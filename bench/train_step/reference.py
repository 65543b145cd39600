"""The full MMCLIP training step in PyTorch eager, timed the way
``crates/train/examples/step_bench.rs`` times ours: zero_grad → forward of
the joint phase → backward → ``torch.optim.SGD(lr=5e-5, momentum=0.9)``.

Built from the parity-tested reference (``python/model_ref/mmclip_ref.py``,
``decoders_ref.py``; ``crates/model/tests/step_parity.rs`` checks it against
``Mmclip::step`` on the CPU): transformers' ``CLIPModel`` through
``mmclip_ref.build_clip``, its ``encode_image`` / ``encode_text`` /
``encode_visible`` / ``masked_text_hidden`` / ``prompt_features`` /
``real_tokens``, AttMIM's ``candidates`` and ``att_masking``, and from
``decoders_ref`` MAE's decoder and loss and the text decoder's blocks.
Where ``mmclip_ref.step`` is written for checking rather than speed, this
file follows the Rust step instead, so that both do the same work:

- one report pass with gradient serves Loss_align and, detached, the masks
  (``mmclip_ref.step`` encodes the reports twice and gets Loss_align from a
  second ``CLIPModel`` forward); Loss_align is ``CLIPModel``'s own loss
  function on the pooled embeddings already computed;
- the text decoder's vocabulary head runs at the selected positions only
  (``decoders_ref.text_decoder`` computes all P·L·49,408 logits);
- EntMLM's selection is ranked on the device (``select_tokens`` below;
  ``mmclip_ref.select_tokens`` loops over the reports on the host);
- the prompts lose their padding columns after the longest prompt's
  end-of-text, once (as ``Mmclip::new`` does; the text encoder is causal,
  so nothing changes);
- attention: ``--attn sdpa`` (default) runs CLIP through transformers'
  SDPA attention and the decoders through ``F.scaled_dot_product_attention``
  (ours uses SDPA everywhere); ``--attn eager`` keeps the reference's
  spelled-out softmax(QKᵀ/√d)V.

Same sizes as the Rust presets (``crates/train/src/config.rs``), same batch:
random pixels, P = round(B·fraction) reports of 77 − (37·r mod 58) tokens,
entity flags on real tokens t with (7t + 3r) mod 10 < 3, 14 prompts of
4 + (5i mod 9) tokens. ``--autocast`` runs the forward pass under
``torch.autocast(device, dtype=--autocast-dtype)`` (bfloat16 by default), as
the Rust example's ``--autocast bf16|f16`` does.

``--compile encoders`` compiles CLIP's two transformer stacks with
``torch.compile`` (``nn.Module.compile``, default inductor settings);
``--compile step`` compiles the whole forward pass of the step (the
backward follows through AOTAutograd; boolean indexing and the forward hook
of the masked report make graph breaks, not errors) and the optimiser's
``step``. The compilation happens in the untimed warm-up steps.

Prints one JSON line with the Rust example's fields (and writes it to
``--json``). ``--count-flops`` first runs one untimed step under
``torch.utils.flop_counter.FlopCounterMode``: the matrix FLOPs autograd
really ran, an independent check of the Rust example's analytic count.

    python3 bench/train_step/reference.py --device cuda --preset vit-b16 --batch 64 \
        [--autocast] [--peak-tflops 989] [--flops-per-step F] [--count-flops] [--json OUT]
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python" / "model_ref"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import CLIPConfig, CLIPModel  # noqa: E402

try:  # CLIPModel's own Loss_align (renamed in transformers 5.x)
    from transformers.models.clip.modeling_clip import image_text_contrastive_loss as clip_loss  # noqa: E402
except ImportError:
    from transformers.models.clip.modeling_clip import clip_loss  # noqa: E402

import decoders_ref  # noqa: E402
import mmclip_ref  # noqa: E402

START, EOT, PROMPTS = 49406, 49407, 14


# --- the Rust presets (crates/train/src/config.rs), as MmclipConfig's serde JSON ---
def preset(name):
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=16, num_channels=3, layer_norm_eps=1e-5)
    text = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                num_attention_heads=8, max_position_embeddings=77, layer_norm_eps=1e-5, eos_token_id=None)
    proj = 512
    mim = dict(hidden_size=512, num_layers=8, num_heads=16, mlp_ratio=4)
    txt_dec = dict(num_layers=3, num_heads=8, intermediate_size=2048)
    if name == "small":  # ViT-S-like, 32 px patches
        vision.update(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=3, patch_size=32)
        text.update(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=3)
        proj = 128
        mim.update(hidden_size=128, num_layers=2, num_heads=4)
        txt_dec.update(num_layers=1, num_heads=3, intermediate_size=768)
    elif name == "tiny":  # the model crate's tiny encoders on 224 px, CLIP vocabulary and context
        vision.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=32)
        text.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
        proj = 24
        mim = dict(hidden_size=16, num_layers=1, num_heads=2, mlp_ratio=2)
        txt_dec = dict(num_layers=1, num_heads=2, intermediate_size=64)
    elif name != "vit-b16":
        raise SystemExit(f"--preset {name}: expected vit-b16, small or tiny")
    # The decoders' input widths, grid and vocabulary follow from the encoders
    # (MmclipConfig::mim_decoder_dims, text_decoder_dims; "input" mode).
    mim.update(in_dim=vision["hidden_size"], grid_size=vision["image_size"] // vision["patch_size"],
               patch_size=vision["patch_size"], num_channels=vision["num_channels"])
    txt_dec.update(hidden_size=text["hidden_size"], image_dim=proj, vocab_size=text["vocab_size"])
    return {
        "clip": {"vision": vision, "text": text, "projection_dim": proj, "logit_scale_init_value": 2.6592},
        "att_mim": {"lambda1": 0.7, "lambda2": 0.75, "score": "norm", "strategy": "att-mim"},
        "mim_mode": "input",
        "norm_pix_loss": True,
        "mim_decoder": mim,
        "mlm": {"kind": "entity", "p": 0.2},
        "text_decoder": txt_dec,
        "prompt_features": "pooled",
        "loss_weights": {"align": 1.0, "mim": 1.0, "mlm": 1.0},
    }


# --- weights ---
def clip_weights(cfg):
    """A freshly initialised CLIPModel's weights under ``clip.*``, for
    ``mmclip_ref.build_clip`` (whose strict load checks every name and shape)."""
    v, t = cfg["clip"]["vision"], cfg["clip"]["text"]
    text = {k: t[k] for k in t if k != "eos_token_id"}
    config = CLIPConfig(text_config=dict(text, hidden_act="quick_gelu"),
                        vision_config=dict(v, hidden_act="quick_gelu"),
                        projection_dim=cfg["clip"]["projection_dim"],
                        logit_scale_init_value=cfg["clip"]["logit_scale_init_value"])
    return {"clip." + k: w for k, w in CLIPModel(config).state_dict().items()}


def decoder_weights(cfg):
    """The pixel and text decoders' trainable weights under the Rust
    VarStore's names (``mim_decoder.*``, ``mlm.*``): linear weights
    N(0, 0.02), biases 0, LayerNorms 1/0, mask vectors N(0, 0.02)."""
    w = {}

    def linear(name, n_in, n_out):
        w[name + ".weight"] = torch.randn(n_out, n_in) * 0.02
        w[name + ".bias"] = torch.zeros(n_out)

    def norm(name, d):
        w[name + ".weight"], w[name + ".bias"] = torch.ones(d), torch.zeros(d)

    def attention(name, d, kv):
        for proj, n_in in (("q_proj", d), ("k_proj", kv), ("v_proj", kv), ("out_proj", d)):
            linear(f"{name}.{proj}", n_in, d)

    m = cfg["mim_decoder"]
    d = m["hidden_size"]
    linear("mim_decoder.decoder_embed", m["in_dim"], d)
    w["mim_decoder.mask_token"] = torch.randn(d) * 0.02
    for i in range(m["num_layers"]):
        blk = f"mim_decoder.decoder_blocks.{i}"
        norm(blk + ".layer_norm1", d)
        attention(blk + ".self_attn", d, d)
        norm(blk + ".layer_norm2", d)
        linear(blk + ".mlp.fc1", d, m["mlp_ratio"] * d)
        linear(blk + ".mlp.fc2", m["mlp_ratio"] * d, d)
    norm("mim_decoder.decoder_norm", d)
    linear("mim_decoder.decoder_pred", d, m["patch_size"] ** 2 * m["num_channels"])

    t = cfg["text_decoder"]
    d = t["hidden_size"]
    w["mlm.mask_embedding"] = torch.randn(d) * 0.02
    for i in range(t["num_layers"]):
        blk = f"mlm.decoder.layers.{i}"
        norm(blk + ".layer_norm1", d)
        attention(blk + ".self_attn", d, d)
        norm(blk + ".layer_norm_cross", d)
        attention(blk + ".cross_attn", d, t["image_dim"])
        norm(blk + ".layer_norm2", d)
        linear(blk + ".mlp.fc1", d, t["intermediate_size"])
        linear(blk + ".mlp.fc2", t["intermediate_size"], d)
    norm("mlm.decoder.final_layer_norm", d)
    linear("mlm.decoder.lm_head", d, t["vocab_size"])
    return w


def sdpa_attention(xq, xkv, w, prefix, heads, causal):
    """``decoders_ref.attention`` through ``F.scaled_dot_product_attention``."""
    b, t, d = xq.shape
    s = xkv.shape[1]
    q = decoders_ref.linear(xq, w, prefix + ".q_proj").view(b, t, heads, -1).transpose(1, 2)
    k = decoders_ref.linear(xkv, w, prefix + ".k_proj").view(b, s, heads, -1).transpose(1, 2)
    v = decoders_ref.linear(xkv, w, prefix + ".v_proj").view(b, s, heads, -1).transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(b, t, d)
    return decoders_ref.linear(y, w, prefix + ".out_proj")


def select_tokens(cfg, ids, entity, noise):
    """``mmclip_ref.select_tokens`` without its per-row host loop (a device
    sync per report): per row the ⌈p·n⌉ lowest-noise eligible positions,
    ranked on the device as ``ent_mlm::select_tokens`` does (the count in
    float64 with a 1e-9 guard, so ⌈0.2·15⌉ stays 3)."""
    strategy = cfg["mlm"]
    predictable = mmclip_ref.real_tokens(cfg, ids, False)
    if strategy["kind"] == "full":
        return predictable
    eligible = predictable & entity if strategy["kind"] == "entity" else predictable
    k = (eligible.sum(-1, keepdim=True, dtype=torch.float64) * strategy["p"] - 1e-9).ceil()
    rank = (noise + (~eligible).float()).argsort(-1).argsort(-1)
    return (rank < k) & eligible


def text_decoder_hidden(w, text, image, heads, layers):
    """``decoders_ref.text_decoder`` up to its final LayerNorm (no vocabulary head)."""
    p, x = "text_decoder.", text
    for i in range(layers):
        blk = f"{p}layers.{i}"
        h = decoders_ref.layer_norm(x, w, blk + ".layer_norm1", 1e-5)
        x = x + decoders_ref.attention(h, h, w, blk + ".self_attn", heads, True)
        h = decoders_ref.layer_norm(x, w, blk + ".layer_norm_cross", 1e-5)
        x = x + decoders_ref.attention(h, image, w, blk + ".cross_attn", heads, False)
        x = x + decoders_ref.mlp(decoders_ref.layer_norm(x, w, blk + ".layer_norm2", 1e-5), w, blk + ".mlp")
    return decoders_ref.layer_norm(x, w, p + "final_layer_norm", 1e-5)


# --- the synthetic batch (the Rust example's lengths and flags) ---
def token_rows(lengths, l):
    ids = torch.randint(1, START, (len(lengths), l))
    for r, n in enumerate(lengths):
        ids[r, 0], ids[r, n - 1], ids[r, n:] = START, EOT, 0
    return ids


def synthetic_batch(cfg, b, p):
    l = cfg["clip"]["text"]["max_position_embeddings"]
    side = cfg["clip"]["vision"]["image_size"]
    lengths = [l - (37 * r) % max(l - 19, 1) for r in range(p)]
    entity = torch.tensor([[1 <= t < n - 1 and (7 * t + 3 * r) % 10 < 3 for t in range(l)]
                           for r, n in enumerate(lengths)], dtype=torch.bool).reshape(p, l)
    return torch.randn(b, 3, side, side), token_rows(lengths, l), entity


class Step:
    """The model, its optimiser and one training step."""

    def __init__(self, cfg, attn):
        self.cfg = cfg
        self.model = mmclip_ref.build_clip(cfg, clip_weights(cfg))
        if attn == "sdpa":
            if hasattr(self.model, "set_attn_implementation"):
                self.model.set_attn_implementation("sdpa")
            else:  # older transformers: the attention layers read it from their config
                for c in (self.model.config, self.model.config.vision_config, self.model.config.text_config):
                    c._attn_implementation = "sdpa"
            decoders_ref.attention = sdpa_attention
        self.attn = self.model.config.vision_config._attn_implementation
        self.dec = {k: v.requires_grad_(True) for k, v in decoder_weights(cfg).items()}
        mim = cfg["mim_decoder"]
        pos = decoders_ref.get_2d_sincos_pos_embed(mim["hidden_size"], mim["grid_size"], cls_token=True)
        self.dec["mim_decoder.decoder_pos_embed"] = torch.from_numpy(pos).float().to(torch.get_default_device())
        self.text_dec = {"text_decoder." + k[len("mlm.decoder."):]: v
                         for k, v in self.dec.items() if k.startswith("mlm.decoder.")}
        l = cfg["clip"]["text"]["max_position_embeddings"]
        prompts = token_rows([4 + (5 * i) % 9 for i in range(PROMPTS)], l)
        self.prompt_ids = prompts[:, :int(prompts.argmax(-1).max()) + 1]
        self.params = list(self.model.parameters()) + [v for v in self.dec.values() if v.requires_grad]
        self.opt = torch.optim.SGD(self.params, lr=5e-5, momentum=0.9)

    def loss(self, pixels, ids, entity):
        """The joint phase's total loss (mmclip_ref.step's order) and the
        number of EntMLM-selected tokens."""
        cfg, model, dec = self.cfg, self.model, self.dec
        p, l = ids.shape
        n = cfg["mim_decoder"]["grid_size"] ** 2
        image_pooled, e_img = mmclip_ref.encode_image(model, pixels)
        report_pooled, e_report = mmclip_ref.encode_text(model, ids)
        e_prompt = mmclip_ref.prompt_features(cfg, model, self.prompt_ids)
        with torch.no_grad():
            report = (e_report.detach(), mmclip_ref.real_tokens(cfg, ids, True))
            cands = mmclip_ref.candidates(cfg, e_img.detach(), report, e_prompt, p)
        ids_keep, mask, ids_restore = mmclip_ref.att_masking(
            cands, torch.rand(pixels.shape[0], n), cfg["att_mim"]["lambda2"])
        mim = cfg["mim_decoder"]
        latent = mmclip_ref.encode_visible(model, pixels, ids_keep)
        pred = decoders_ref.mim_decoder(dec, latent, ids_restore, mim["num_heads"], mim["num_layers"])
        loss_mim = decoders_ref.mim_loss(pixels, pred, mask, mim["patch_size"], cfg["norm_pix_loss"])

        selected = select_tokens(cfg, ids, entity, torch.rand(p, l))
        hidden = mmclip_ref.masked_text_hidden(model, ids, selected, dec["mlm.mask_embedding"])
        td = cfg["text_decoder"]
        h = text_decoder_hidden(self.text_dec, hidden, e_img[:p], td["num_heads"], td["num_layers"])
        logits = F.linear(h[selected], dec["mlm.decoder.lm_head.weight"], dec["mlm.decoder.lm_head.bias"])
        loss_mlm = F.cross_entropy(logits, ids[selected])

        # CLIPModel's Loss_align on the pooled embeddings already computed.
        norm = lambda x: x / x.norm(p=2, dim=-1, keepdim=True)  # noqa: E731
        logits_per_text = norm(report_pooled) @ norm(image_pooled[:p]).t() * model.logit_scale.exp()
        loss_align = clip_loss(logits_per_text)
        w = cfg["loss_weights"]
        losses = {"mim": loss_mim, "mlm": loss_mlm, "align": loss_align}
        total = w["mim"] * loss_mim + w["mlm"] * loss_mlm + w["align"] * loss_align
        return total, losses, selected

    def train_step(self, batch, autocast):
        self.opt.zero_grad()
        with autocast():
            total, losses, selected = self.loss(*batch)
        total.backward()
        self.opt.step()
        return total, losses, selected


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    ap.add_argument("--preset", default="vit-b16")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--paired-fraction", type=float, default=0.75)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--autocast", action="store_true")
    ap.add_argument("--autocast-dtype", choices=("bfloat16", "float16"), default="bfloat16")
    ap.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa")
    ap.add_argument("--compile", choices=("off", "encoders", "step"), default="off")
    ap.add_argument("--peak-tflops", type=float)
    ap.add_argument("--flops-per-step", type=float, help="model FLOPs per step for the MFU (run.sh passes the Rust example's analytic count)")
    ap.add_argument("--count-flops", action="store_true",
                    help="count the FLOPs of one untimed step with FlopCounterMode (on the CPU use --attn eager: "
                         "torch's flop counter has no formula for the CPU's fused attention kernel)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = preset(args.preset)
    b = args.batch
    p = round(b * args.paired_fraction)
    if not 1 <= p <= b:
        raise SystemExit("this step needs 1 ≤ round(batch·fraction) ≤ batch")

    # Every tensor the reference creates (masks, aranges) lands on the device.
    torch.set_default_device(args.device)
    torch.manual_seed(args.seed)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    start = time.perf_counter()
    step = Step(cfg, args.attn)
    if args.compile == "encoders":
        step.model.vision_model.encoder.compile()
        step.model.text_model.encoder.compile()
    elif args.compile == "step":
        step.loss = torch.compile(step.loss)
        step.opt.step = torch.compile(step.opt.step)
    batch = synthetic_batch(cfg, b, p)
    sync()
    init_s = time.perf_counter() - start
    use_autocast = args.autocast
    dtype = getattr(torch, args.autocast_dtype)

    def autocast():
        return torch.autocast(args.device, dtype=dtype, enabled=use_autocast)

    counted = None
    if args.count_flops:
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as counter:
            step.train_step(batch, autocast)
        counted = counter.get_total_flops()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # Each step's time, and the time the host took to queue it (the same on
    # the CPU; on CUDA the step runs on after that).
    times, queued = [], []
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        total, losses, selected = step.train_step(batch, autocast)
        host = time.perf_counter() - t0
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            queued.append(host)

    flops, source = (args.flops_per_step, "given") if args.flops_per_step else (counted, "counted")
    mean_s = sum(times) / len(times)
    achieved = flops / mean_s / 1e12 if flops else None
    loss_total = float(total.detach())
    mib = 1 << 20
    line = {
        "impl": "pytorch-eager" if args.compile == "off" else f"pytorch-compile-{args.compile}",
        "compile": args.compile,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "torch": torch.__version__,
        "attn": step.attn,
        "preset": args.preset,
        "batch": b,
        "paired": p,
        "report_len": batch[1].shape[1],
        "prompts": PROMPTS,
        "prompt_len": step.prompt_ids.shape[1],
        "mlm_selected": int(selected.sum()),
        "steps": args.steps,
        "warmup": args.warmup,
        "autocast": use_autocast,
        "autocast_dtype": args.autocast_dtype if use_autocast else None,
        "threads": args.threads,
        "params": sum(t.numel() for t in step.params),
        "init_s": init_s,
        "ms_per_step_mean": 1e3 * mean_s,
        "ms_per_step_median": 1e3 * statistics.median(times),
        "ms_per_step_min": 1e3 * min(times),
        "host_ms_per_step_median": 1e3 * statistics.median(queued),
        "images_per_s": b * len(times) / sum(times),
        "flops_per_step": flops,
        "flops_source": source,
        "flops_counted": counted,
        "tflops_achieved": achieved,
        "peak_tflops": args.peak_tflops,
        "mfu": achieved / args.peak_tflops if achieved and args.peak_tflops else None,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / mib if args.device == "cuda" else None,
        "peak_gpu_reserved_mib": torch.cuda.max_memory_reserved() / mib if args.device == "cuda" else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss_total": loss_total,
        **{f"loss_{k}": float(v.detach()) for k, v in losses.items()},
        "losses_finite": math.isfinite(loss_total),
    }
    text = json.dumps(line)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
