#!/usr/bin/env python3
"""Make a release root that holds the first half of another's subjects.

    subset.py SRC_ROOT DST_ROOT

DST_ROOT gets the four `mimic-cxr-2.0.0-*.csv.gz` files filtered to the
first half of SRC's subjects (sorted by id, so whole patients move together)
and a symlink `files -> SRC_ROOT/files`. Both tools plan from the metadata
CSV, so the other half's files are never read. This gives N and 2N images
from one generated world, without generating twice.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import sys
from pathlib import Path

STEMS = ["metadata", "split", "chexpert", "negbio"]


def main() -> int:
    src, dst = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    with gzip.open(src / "mimic-cxr-2.0.0-metadata.csv.gz", "rt", newline="") as f:
        subjects = sorted({r["subject_id"] for r in csv.DictReader(f)})
    keep = set(subjects[: len(subjects) // 2])
    for stem in STEMS:
        name = f"mimic-cxr-2.0.0-{stem}.csv.gz"
        if not (src / name).exists():
            continue
        with gzip.open(src / name, "rt", newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            col = header.index("subject_id")
            rows = [r for r in reader if r[col] in keep]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        with gzip.open(dst / name, "wt", newline="") as f:
            f.write(buf.getvalue())
    link = dst / "files"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(src / "files", link)
    print(f"{dst}: {len(keep)} of {len(subjects)} subjects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
