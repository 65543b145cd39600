"""`python/model_ref/make_golden.py`, the reference the Rust model is held to:
its files are complete and consistent, its OpenAI renaming is lossless, and
the real ViT-B/16 CLIP has the 149,620,737 parameters the Rust test pins."""

import importlib.util
import subprocess
import sys

import pytest

from conftest import ROOT

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

SCRIPT = ROOT / "python" / "model_ref" / "make_golden.py"


def load_script():
    spec = importlib.util.spec_from_file_location("make_golden", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def golden_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("golden")
    subprocess.run([sys.executable, str(SCRIPT), str(out)], check=True, capture_output=True)
    return out


def test_script_writes_weights_inputs_and_outputs(golden_dir):
    g = load_file(golden_dir / "golden.safetensors")
    assert set(g) == {
        "pixel_values", "input_ids", "image_embeds", "text_embeds",
        "image_tokens", "text_tokens", "logit_scale",
    }
    mg = load_script()
    b = len(mg.EOT_POSITIONS)
    assert g["image_embeds"].shape == (b, mg.PROJECTION_DIM)
    assert g["text_tokens"].shape == (b, mg.TEXT["max_position_embeddings"], mg.PROJECTION_DIM)
    n = (mg.VISION["image_size"] // mg.VISION["patch_size"]) ** 2
    assert g["image_tokens"].shape == (b, n, mg.PROJECTION_DIM)
    # End-of-text is the largest id, at the stated positions.
    assert g["input_ids"].argmax(-1).tolist() == mg.EOT_POSITIONS


def test_outputs_are_deterministic(golden_dir, tmp_path):
    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], check=True, capture_output=True)
    a, b = load_file(golden_dir / "golden.safetensors"), load_file(tmp_path / "golden.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_pooled_text_embedding_is_the_eot_token(golden_dir):
    g = load_file(golden_dir / "golden.safetensors")
    rows = torch.arange(len(g["input_ids"]))
    eot = g["input_ids"].argmax(-1)
    assert torch.allclose(g["text_tokens"][rows, eot], g["text_embeds"], atol=1e-6)


def test_openai_naming_is_a_lossless_renaming(golden_dir):
    hf = load_file(golden_dir / "model.safetensors")
    oa = load_file(golden_dir / "model_openai.safetensors")
    params = {k: v for k, v in hf.items() if not k.endswith("position_ids")}
    assert sum(v.numel() for v in oa.values()) == sum(v.numel() for v in params.values())
    assert torch.equal(oa["visual.proj"].t(), hf["visual_projection.weight"])
    q, k, v = oa["transformer.resblocks.1.attn.in_proj_weight"].chunk(3)
    assert torch.equal(k, hf["text_model.encoder.layers.1.self_attn.k_proj.weight"])


def test_vit_b16_clip_has_149_620_737_parameters():
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                         num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=224, patch_size=16),
        projection_dim=512,
    )
    with torch.device("meta"):
        model = transformers.CLIPModel(config)
    assert sum(p.numel() for p in model.parameters()) == 149_620_737
