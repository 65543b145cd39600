"""Checks a `train export-hf` folder with `transformers`: CLIPModel loads it
and gives the embeddings `train embed` wrote (the e2e test runs this).

Usage: python check_export.py HF_DIR TEXTS_FILE TEXT_PARQUET IMAGE_DIR IMAGE_PARQUET

Texts are tokenised by the folder's own tokenizer.json; images must be
224×224 (the Rust side then only normalises them, so no resampling
differences enter). Prints the largest absolute difference and exits 1 when
it is above 1e-4.
"""

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from tokenizers import Tokenizer
from transformers import CLIPModel

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def embeddings(path):
    t = pq.read_table(path)
    return t.column("key").to_pylist(), np.array(t.column("embedding").to_pylist(), dtype=np.float32)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def main():
    hf, texts_file, text_parquet, image_dir, image_parquet = map(Path, sys.argv[1:6])
    model = CLIPModel.from_pretrained(hf).eval()
    tok = Tokenizer.from_file(str(hf / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    worst = 0.0

    keys, rust = embeddings(text_parquet)
    lines = [l for l in texts_file.read_text().splitlines() if l.strip()]
    assert keys == lines, (keys, lines)
    ids = np.zeros((len(lines), 77), dtype=np.int64)
    for i, line in enumerate(lines):
        enc = tok.encode(line).ids[:77]
        ids[i, : len(enc)] = enc
    with torch.no_grad():
        out = model.get_text_features(input_ids=torch.from_numpy(ids))
    out = getattr(out, "pooler_output", out)
    worst = max(worst, float(np.abs(unit(out.numpy()) - rust).max()))

    keys, rust = embeddings(image_parquet)
    pixels = []
    for key in keys:
        img = np.asarray(Image.open(image_dir / key).convert("L"), dtype=np.float32) / 255.0
        assert img.shape == (224, 224), f"{key}: the check needs 224×224 images"
        pixels.append((np.stack([img] * 3, axis=-1) - MEAN) / STD)
    x = torch.from_numpy(np.stack(pixels).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        out = model.get_image_features(pixel_values=x)
    out = getattr(out, "pooler_output", out)
    worst = max(worst, float(np.abs(unit(out.numpy()) - rust).max()))

    print(f"largest difference {worst:.2e}")
    sys.exit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
    main()
