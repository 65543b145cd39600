#!/usr/bin/env python3
"""Check that two `ingest` output folders hold the same stored images.

    same_images.py OUT_A OUT_B

Joins the rows of every shard on `image_id` and compares the `image`
column's bytes (and the stored size). Prints one summary line; exits 1 on
any difference, naming the first rows that differ. Used to prove that a
speed change to the pixel path left every stored pixel as it was.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq

COLUMNS = ["image_id", "image", "image_height", "image_width"]


def rows(folder: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for shard in sorted(folder.glob("*.parquet")):
        t = pq.read_table(shard, columns=COLUMNS).to_pydict()
        for i, key in enumerate(t["image_id"]):
            out[key] = (t["image"][i], t["image_height"][i], t["image_width"][i])
    return out


def main() -> int:
    a, b = rows(Path(sys.argv[1])), rows(Path(sys.argv[2]))
    if a.keys() != b.keys():
        print(f"different rows: {len(a.keys() - b.keys())} only in A, {len(b.keys() - a.keys())} only in B")
        return 1
    differ = [k for k in sorted(a) if a[k] != b[k]]
    pixels = sum(len(v[0]) for v in a.values())
    print(f"{sys.argv[1]} vs {sys.argv[2]}: {len(a)} rows, {pixels} image bytes, {len(differ)} rows differ")
    for k in differ[:5]:
        print("  differs:", k)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
