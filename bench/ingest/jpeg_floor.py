#!/usr/bin/env python3
"""How fast can any pipeline take a MIMIC-CXR-JPG image? libjpeg-turbo's floor.

    jpeg_floor.py ROOT [--limit N] [--tokenizer PATH]

ROOT is a MIMIC-CXR-JPG tree (`synth --mimic-format both` writes one under
`mimic-cxr-jpg/`). On one core, in this process, it times per image:

- the reference pipeline's whole per-image work (`reference.process`:
  report, CLIP tokens, `cv2.imdecode`, Pillow Lanczos), and the budget that
  4x the reference leaves;
- libjpeg-turbo decoding alone (Pillow's bundled build), at full size and
  with DCT scaling (`Image.draft`: 1/2, 1/4, 1/8 of the size, where the
  inverse DCT shrinks to 4x4, 2x2, 1x1 and the AC coefficients are only
  skipped), and `cv2.imdecode` (OpenCV's libjpeg-turbo).

Every decoder must Huffman-decode every coefficient of a baseline JPEG even
to throw it away, so the 1/8 row is the least any JPEG path can spend on an
image before doing anything with it. When it is above the budget, 4x the
reference is out of reach for every decoder, not only ours.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import reference as ref  # noqa: E402


def per_image_ms(fn, items, rounds: int) -> float:
    """Fastest of `rounds` passes over `items`, in ms per item."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return best / len(items) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokenizer", default=".cache/clip/tokenizer.json")
    a = ap.parse_args()

    import cv2
    import numpy as np
    from PIL import Image

    ref.init_worker(a.tokenizer, {"short_side": 256, "resize": "lanczos",
                                  "sections": ["findings", "impression", "last_paragraph"]})
    items = ref.plan(a.root, {"PA", "AP"}, "jpg")[: a.limit]
    if not items:
        sys.exit(f"{a.root}: no PA/AP JPEG images planned (is it a MIMIC-CXR-JPG tree?)")
    blobs = [Path(item[-1]).read_bytes() for item in items]

    def pillow(scale: int):
        def decode(blob: bytes):
            im = Image.open(io.BytesIO(blob))
            if scale > 1:
                im.draft("L", (im.width // scale, im.height // scale))
            return np.asarray(im)
        return decode

    def opencv(blob: bytes):
        return cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_GRAYSCALE)

    reference = per_image_ms(ref.process, items, a.rounds)
    budget = reference / 4
    w, h = Image.open(io.BytesIO(blobs[0])).size
    print(f"{len(items)} images, first {w}x{h}, {sum(map(len, blobs)) / len(blobs) / 1e6:.2f} MB "
          f"a file on average; one core, fastest of {a.rounds} passes\n")
    print("| work per image | ms | ÷ 4× budget |")
    print("| --- | ---: | ---: |")
    print(f"| reference pipeline (`reference.process`) | {reference:.1f} | |")
    print(f"| **budget at 4× the reference** | **{budget:.1f}** | 1.00 |")
    rows = [("libjpeg-turbo, `cv2.imdecode`, full size", opencv)]
    rows += [(f"libjpeg-turbo, Pillow, {'full size' if s == 1 else f'DCT-scaled 1/{s}'}", pillow(s))
             for s in (1, 2, 4, 8)]
    floor = None
    for name, fn in rows:
        ms = per_image_ms(fn, blobs, a.rounds)
        floor = ms  # the last row, 1/8, is the floor
        print(f"| {name} | {ms:.1f} | {ms / budget:.2f} |")
    print(f"\nDecoding alone at 1/8 scale caps any JPEG path at {reference / floor:.1f}× the reference.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
