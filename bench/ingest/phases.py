#!/usr/bin/env python3
"""Where the reference pipeline's time goes: each step timed on one core.

    phases.py ROOT --format dicom|jpg [--limit N] [--tokenizer PATH]

Runs the steps of `reference.py` one after another in this process, on the
first N planned images, and prints the mean milliseconds per image of each
step (read, decode, window, equalise, resize, text). The Rust side's
breakdown comes from `perf` (see run.sh, PROFILE=1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import reference as ref  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--format", choices=["dicom", "jpg"], default="dicom")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--tokenizer", default=".cache/clip/tokenizer.json")
    a = ap.parse_args()

    import cv2
    import numpy as np
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ref.init_worker(a.tokenizer, {"short_side": 256, "resize": "lanczos", "sections": ["findings", "impression", "last_paragraph"]})
    items = ref.plan(a.root, {"PA", "AP"}, a.format)[: a.limit]
    t = defaultdict(float)

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        t[name] += now - t0
        return now

    for it in items:
        report_path, image_path = it[6], it[7]
        t0 = time.perf_counter()
        report = Path(report_path).read_text()
        secs = ref.sections(report)
        text = " ".join(ref.clean(secs[k]) for k in ("findings", "impression", "last_paragraph") if k in secs)
        ref.tokenize(text)
        list(ref.LEXICON_RE.finditer(text))
        t0 = lap("text (sections, tokens, lexicon)", t0)
        raw = Path(image_path).read_bytes()
        t0 = lap("read file", t0)
        if a.format == "dicom":
            import io
            ds = pydicom.dcmread(io.BytesIO(raw))
            px = ds.pixel_array
            t0 = lap("decode (pydicom pixel_array)", t0)
            v = apply_modality_lut(px, ds)
            lo, hi = float(v.min()), float(v.max())
            u8 = ((v - lo) * (255.0 / (hi - lo))).astype(np.uint8)
            t0 = lap("rescale + min-max to 8 bit (numpy)", t0)
            u8 = cv2.equalizeHist(u8)
            if ds.PhotometricInterpretation == "MONOCHROME1":
                u8 = 255 - u8
            t0 = lap("equalizeHist + invert (cv2)", t0)
        else:
            u8 = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_GRAYSCALE)
            t0 = lap("decode (cv2.imdecode)", t0)
        ref.resize(u8, 256)
        t0 = lap("resize to 256 (Pillow Lanczos)", t0)

    n = max(len(items), 1)
    total = sum(t.values())
    result = {k: round(v / n * 1000, 1) for k, v in t.items()}
    result["total ms/image"] = round(total / n * 1000, 1)
    result["images"] = len(items)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
