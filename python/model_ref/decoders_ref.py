"""PyTorch reference of the AttMIM pixel decoder, the EntMLM text decoder and
their losses, for parity with ``crates/model`` (``mim.rs``, ``ent_mlm.rs``,
``losses.rs``).

Written from the sources the Rust code names, not from the Rust code: MAE's
``models_mae.py`` (``forward_decoder``, ``patchify``, ``forward_loss``) and
``util/pos_embed.py`` (numpy sin-cos positions, copied below), with
attention spelled out (softmax(QKᵀ/√d)V) rather than through
``scaled_dot_product_attention``.

Usage: python decoders_ref.py DIR
  DIR/weights.safetensors  the Rust VarStore (``mim_decoder.*``, ``text_decoder.*``;
                           fused ``qkv_proj`` split by ``split_qkv``)
  DIR/inputs.safetensors   latent, ids_restore, imgs, mask, text, image, targets,
                           selected, and the config as small int tensors
  writes DIR/outputs.safetensors: pred, mim_loss, mim_loss_raw, logits,
  mlm_loss, pos_embed (MAE's numpy positions)
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


# --- util/pos_embed.py (facebookresearch/mae), verbatim but for style ---
def get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=False):
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0)
    grid = grid.reshape([2, 1, grid_size, grid_size])
    pos_embed = get_2d_sincos_pos_embed_from_grid(embed_dim, grid)
    if cls_token:
        pos_embed = np.concatenate([np.zeros([1, embed_dim]), pos_embed], axis=0)
    return pos_embed


def get_2d_sincos_pos_embed_from_grid(embed_dim, grid):
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


def get_1d_sincos_pos_embed_from_grid(embed_dim, pos):
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega
    pos = pos.reshape(-1)
    out = np.einsum("m,d->md", pos, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


# --- weights ---
QKV_PARTS = ("q_proj", "k_proj", "v_proj")


def split_qkv(w):
    """The Rust VarStore holds a self-attention's projections as one
    ``{p}.qkv_proj.{weight,bias}`` (rows q, k, v); this returns the weights
    with each split into HF's ``{p}.q_proj``, ``{p}.k_proj``, ``{p}.v_proj``."""
    out = {}
    for name, t in w.items():
        head, _, suffix = name.rpartition(".")
        prefix, _, part = head.rpartition(".")
        if part == "qkv_proj":
            for p, chunk in zip(QKV_PARTS, t.chunk(3, 0)):
                out[f"{prefix}.{p}.{suffix}"] = chunk.contiguous()
        else:
            out[name] = t
    return out


# --- blocks ---
def layer_norm(x, w, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], w[prefix + ".weight"], w[prefix + ".bias"], eps)


def linear(x, w, prefix):
    return F.linear(x, w[prefix + ".weight"], w.get(prefix + ".bias"))


def attention(xq, xkv, w, prefix, heads, causal):
    b, t, d = xq.shape
    s = xkv.shape[1]
    q = linear(xq, w, prefix + ".q_proj").view(b, t, heads, -1).transpose(1, 2)
    k = linear(xkv, w, prefix + ".k_proj").view(b, s, heads, -1).transpose(1, 2)
    v = linear(xkv, w, prefix + ".v_proj").view(b, s, heads, -1).transpose(1, 2)
    att = q @ k.transpose(-1, -2) / (d // heads) ** 0.5
    if causal:
        att = att.masked_fill(torch.ones(t, s, dtype=torch.bool).triu(1), float("-inf"))
    y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
    return linear(y, w, prefix + ".out_proj")


def mlp(x, w, prefix):
    return linear(F.gelu(linear(x, w, prefix + ".fc1")), w, prefix + ".fc2")


def mim_decoder(w, latent, ids_restore, heads, layers):
    p = "mim_decoder."
    x = linear(latent, w, p + "decoder_embed")
    b, t, d = x.shape
    n = ids_restore.shape[1]
    mask_tokens = w[p + "mask_token"].view(1, 1, d).repeat(b, n + 1 - t, 1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, d))
    x = torch.cat([x[:, :1, :], x_], dim=1) + w[p + "decoder_pos_embed"]
    for i in range(layers):
        blk = f"{p}decoder_blocks.{i}"
        h = layer_norm(x, w, blk + ".layer_norm1", 1e-6)
        x = x + attention(h, h, w, blk + ".self_attn", heads, False)
        x = x + mlp(layer_norm(x, w, blk + ".layer_norm2", 1e-6), w, blk + ".mlp")
    x = linear(layer_norm(x, w, p + "decoder_norm", 1e-6), w, p + "decoder_pred")
    return x[:, 1:, :]


def patchify(imgs, p):
    n, c, hh, ww = imgs.shape
    h, wd = hh // p, ww // p
    x = imgs.reshape(n, c, h, p, wd, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, h * wd, p * p * c)


def mim_loss(imgs, pred, mask, p, norm_pix):
    target = patchify(imgs, p)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


def text_decoder(w, text, image, heads, layers):
    p = "text_decoder."
    x = text
    for i in range(layers):
        blk = f"{p}layers.{i}"
        h = layer_norm(x, w, blk + ".layer_norm1", 1e-5)
        x = x + attention(h, h, w, blk + ".self_attn", heads, True)
        x = x + attention(layer_norm(x, w, blk + ".layer_norm_cross", 1e-5), image, w, blk + ".cross_attn", heads, False)
        x = x + mlp(layer_norm(x, w, blk + ".layer_norm2", 1e-5), w, blk + ".mlp")
    return linear(layer_norm(x, w, p + "final_layer_norm", 1e-5), w, p + "lm_head")


def main(d):
    d = Path(d)
    w = split_qkv(load_file(d / "weights.safetensors"))
    x = load_file(d / "inputs.safetensors")
    cfg = {k: int(x[k]) for k in ("mim_heads", "mim_layers", "patch", "grid", "txt_heads", "txt_layers")}
    pred = mim_decoder(w, x["latent"], x["ids_restore"], cfg["mim_heads"], cfg["mim_layers"])
    logits = text_decoder(w, x["text"], x["image"], cfg["txt_heads"], cfg["txt_layers"])
    v = logits.shape[-1]
    sel = x["selected"].bool()
    mlm = F.cross_entropy(logits.reshape(-1, v)[sel.reshape(-1)], x["targets"].reshape(-1)[sel.reshape(-1)])
    dim = w["mim_decoder.decoder_pos_embed"].shape[-1]
    out = {
        "pred": pred,
        "mim_loss": mim_loss(x["imgs"], pred, x["mask"], cfg["patch"], True).reshape(1),
        "mim_loss_raw": mim_loss(x["imgs"], pred, x["mask"], cfg["patch"], False).reshape(1),
        "logits": logits,
        "mlm_loss": mlm.reshape(1),
        "pos_embed": torch.from_numpy(get_2d_sincos_pos_embed(dim, cfg["grid"], cls_token=True)).float(),
    }
    save_file({k: t.detach().contiguous() for k, t in out.items()}, d / "outputs.safetensors")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: decoders_ref.py DIR")
    with torch.no_grad():
        main(sys.argv[1])
