"""Golden outputs of a tiny random Hugging Face ``CLIPModel`` for the Rust port.

The Rust encoders in ``crates/model`` mirror ``transformers.models.clip.
modeling_clip`` (CLIPVisionTransformer, CLIPTextTransformer, CLIPModel). This
script builds a small random CLIPModel (QuickGELU, fixed seed, no network),
saves its weights in the Hugging Face layout and, for fixed inputs, the
embeddings the Rust model must reproduce:

``model.safetensors``   the CLIPModel state dict (HF names, ``position_ids`` included
                        as HF writes them, so the loader's skip is exercised)
``model_openai.safetensors``  the same weights in OpenAI / open_clip naming
                        (fused ``in_proj``, ``[D, C]`` projections), written
                        here independently of the Rust renamer
``golden.safetensors``  inputs ``pixel_values``, ``input_ids`` and outputs
                        ``image_embeds``, ``text_embeds`` (projected, pooled, not
                        normalised), ``image_tokens`` (post-LN + projection of the
                        patch tokens), ``text_tokens`` (projection of every token),
                        ``logit_scale``

Usage: python make_golden.py OUT_DIR
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPConfig, CLIPModel  # noqa: E402

# Must match `VisionConfig::tiny()` and `TextConfig::tiny()` in crates/model.
VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    num_channels=3,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
TEXT = dict(
    vocab_size=100,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=16,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    # eos_token_id 2 selects HF's legacy pooling, argmax of input_ids, which is
    # what the OpenAI tokenizer's checkpoints (end-of-text = the largest id) use.
    eos_token_id=2,
    bos_token_id=0,
    pad_token_id=1,
)
PROJECTION_DIM = 24
EOT_ID = TEXT["vocab_size"] - 1
# End-of-text position of each input row, checked by the Rust test.
EOT_POSITIONS = [5, 15, 0]


def build():
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=TEXT, vision_config=VISION, projection_dim=PROJECTION_DIM
    )
    model = CLIPModel(config).eval()
    # Random init leaves biases and LayerNorm affine at 0/1; perturb every
    # parameter so that a wrongly mapped or transposed weight shows.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    b = len(EOT_POSITIONS)
    pixel_values = torch.randn(b, 3, VISION["image_size"], VISION["image_size"], generator=g)
    length = TEXT["max_position_embeddings"]
    input_ids = torch.randint(0, EOT_ID, (b, length), generator=g)
    for row, pos in enumerate(EOT_POSITIONS):
        input_ids[row, pos] = EOT_ID
        input_ids[row, pos + 1 :] = 0  # padding after end-of-text
    return model, pixel_values, input_ids


def golden(model, pixel_values, input_ids):
    with torch.no_grad():
        # The submodules directly: CLIPModel's own outputs changed shape across
        # transformers versions (v5 returns projected pooler outputs).
        vis = model.vision_model(pixel_values=pixel_values)
        txt = model.text_model(input_ids=input_ids)
        # vis.last_hidden_state: [B, 1+N, D], before post_layernorm
        image_tokens = model.visual_projection(
            model.vision_model.post_layernorm(vis.last_hidden_state[:, 1:])
        )
        text_tokens = model.text_projection(txt.last_hidden_state)  # [B, L, C]
        image_embeds = model.visual_projection(vis.pooler_output)  # [B, C]
        text_embeds = model.text_projection(txt.pooler_output)  # [B, C]
    return {
        "pixel_values": pixel_values.contiguous(),
        "input_ids": input_ids.contiguous(),
        "image_embeds": image_embeds.contiguous(),
        "text_embeds": text_embeds.contiguous(),
        "image_tokens": image_tokens.contiguous(),
        "text_tokens": text_tokens.contiguous(),
        "logit_scale": model.logit_scale.detach().reshape(1).contiguous(),
    }


def hf_to_openai(state):
    """OpenAI/open_clip names (``clip/model.py``) for a HF CLIPModel state dict."""
    out = {}
    towers = {"vision_model": "visual.", "text_model": ""}
    for tower, prefix in towers.items():
        emb = f"{tower}.embeddings."
        if tower == "vision_model":
            out["visual.conv1.weight"] = state[emb + "patch_embedding.weight"]
            out["visual.class_embedding"] = state[emb + "class_embedding"]
            out["visual.ln_pre.weight"] = state["vision_model.pre_layrnorm.weight"]
            out["visual.ln_pre.bias"] = state["vision_model.pre_layrnorm.bias"]
            out["visual.ln_post.weight"] = state["vision_model.post_layernorm.weight"]
            out["visual.ln_post.bias"] = state["vision_model.post_layernorm.bias"]
            out["visual.proj"] = state["visual_projection.weight"].t()
        else:
            out["token_embedding.weight"] = state[emb + "token_embedding.weight"]
            out["ln_final.weight"] = state["text_model.final_layer_norm.weight"]
            out["ln_final.bias"] = state["text_model.final_layer_norm.bias"]
            out["text_projection"] = state["text_projection.weight"].t()
        out[prefix + "positional_embedding"] = state[emb + "position_embedding.weight"]
        i = 0
        while f"{tower}.encoder.layers.{i}.layer_norm1.weight" in state:
            hf = f"{tower}.encoder.layers.{i}."
            oa = f"{prefix}transformer.resblocks.{i}."
            for kind in ("weight", "bias"):
                out[oa + "ln_1." + kind] = state[hf + "layer_norm1." + kind]
                out[oa + "ln_2." + kind] = state[hf + "layer_norm2." + kind]
                out[oa + "attn.in_proj_" + kind] = torch.cat(
                    [state[hf + f"self_attn.{x}_proj.{kind}"] for x in "qkv"]
                )
                out[oa + "attn.out_proj." + kind] = state[hf + "self_attn.out_proj." + kind]
                out[oa + "mlp.c_fc." + kind] = state[hf + "mlp.fc1." + kind]
                out[oa + "mlp.c_proj." + kind] = state[hf + "mlp.fc2." + kind]
            i += 1
    out["logit_scale"] = state["logit_scale"]
    return {k: v.contiguous() for k, v in out.items()}


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    model, pixel_values, input_ids = build()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    # Older HF checkpoints (openai/clip-vit-base-patch16 among them) carry the
    # position_ids buffers; write them so the loader's skip is exercised.
    state["text_model.embeddings.position_ids"] = torch.arange(TEXT["max_position_embeddings"])[None]
    n_pos = (VISION["image_size"] // VISION["patch_size"]) ** 2 + 1
    state["vision_model.embeddings.position_ids"] = torch.arange(n_pos)[None]
    save_file(state, os.path.join(out_dir, "model.safetensors"))
    save_file(hf_to_openai(state), os.path.join(out_dir, "model_openai.safetensors"))
    save_file(golden(model, pixel_values, input_ids), os.path.join(out_dir, "golden.safetensors"))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_golden.py OUT_DIR")
    main(sys.argv[1])
