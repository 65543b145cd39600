#!/usr/bin/env python3
"""Check that two shard folders hold the same rows, so a timing compares like with like.

    compare.py OURS_DIR REFERENCE_DIR [--json OUT.json]

Joins the two on `image_id` and reports: rows in each, rows in both, and
over the common rows the share with equal `text`, equal `token_ids`, equal
labels, equal stored size, and the mean absolute difference of the stored
8-bit pixels (where sizes agree). Both sides store raw 8-bit pixels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

COLUMNS = ["image_id", "text", "token_ids", "image", "image_height", "image_width"]


def load(folder: Path) -> dict[str, dict]:
    rows = {}
    for shard in sorted(folder.glob("shard-*.parquet")):
        t = pq.read_table(shard)
        labels = [c for c in t.column_names if c.startswith("label_")]
        cols = t.select(COLUMNS + labels).to_pylist()
        for r in cols:
            r["labels"] = tuple(r.pop(c) for c in labels)
            rows[r["image_id"]] = r
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("ours", type=Path)
    ap.add_argument("reference", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    ours, ref = load(a.ours), load(a.reference)
    common = sorted(ours.keys() & ref.keys())
    n = max(len(common), 1)
    same_size = [k for k in common
                 if (ours[k]["image_height"], ours[k]["image_width"]) == (ref[k]["image_height"], ref[k]["image_width"])]
    diffs = [np.abs(np.frombuffer(ours[k]["image"], np.uint8).astype(np.int16)
                    - np.frombuffer(ref[k]["image"], np.uint8).astype(np.int16)).mean() for k in same_size]
    result = {
        "rows_ours": len(ours),
        "rows_reference": len(ref),
        "rows_common": len(common),
        "text_equal": round(sum(ours[k]["text"] == ref[k]["text"] for k in common) / n, 4),
        "token_ids_equal": round(sum(ours[k]["token_ids"] == ref[k]["token_ids"] for k in common) / n, 4),
        "labels_equal": round(sum(ours[k]["labels"] == ref[k]["labels"] for k in common) / n, 4),
        "size_equal": round(len(same_size) / n, 4),
        "pixel_mean_abs_diff": round(float(np.mean(diffs)), 3) if diffs else None,
        "pixel_max_mean_abs_diff": round(float(np.max(diffs)), 3) if diffs else None,
    }
    print(json.dumps(result))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
