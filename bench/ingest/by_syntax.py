#!/usr/bin/env python3
"""Split a MIMIC-CXR (DICOM) release root into one root per transfer syntax.

    by_syntax.py SRC_ROOT DST_DIR

For each transfer syntax among SRC's PA/AP DICOM files (the views both
tools keep by default), DST_DIR/<uid>/ gets the `mimic-cxr-2.0.0-*.csv.gz`
files with the metadata and split rows of that syntax's images only (the
per-study label files are kept whole: both tools join them on the study)
and a symlink `files -> SRC_ROOT/files`, as `subset.py` does; and
DST_DIR/<uid>.first/ the same with that syntax's first image only. Both
tools plan from the metadata CSV, so (CPU(all) - CPU(first)) / (n - 1) is
a syntax's CPU time per image without the per-run costs (start-up,
tokenizer, worker pool). Prints `uid images` lines.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import sys
from collections import defaultdict
from pathlib import Path

import pydicom

PER_IMAGE = ["metadata", "split"]
VIEWS = {"PA", "AP"}
PER_STUDY = ["chexpert", "negbio"]


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with gzip.open(path, "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, list(reader)


def write_rows(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    with gzip.open(path, "wt", newline="") as f:
        f.write(buf.getvalue())


def write_root(src: Path, out: Path, ids: set[str]) -> None:
    """A release root at `out` whose images are `ids`."""
    out.mkdir(parents=True, exist_ok=True)
    for stem in PER_IMAGE + PER_STUDY:
        name = f"mimic-cxr-2.0.0-{stem}.csv.gz"
        if not (src / name).exists():
            continue
        h, rs = read_rows(src / name)
        if stem in PER_IMAGE:
            rs = [r for r in rs if r[h.index("dicom_id")] in ids]
        write_rows(out / name, h, rs)
    link = out / "files"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(src / "files", link)


def main() -> int:
    src, dst = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    header, rows = read_rows(src / "mimic-cxr-2.0.0-metadata.csv.gz")
    col = {name: header.index(name) for name in ("dicom_id", "subject_id", "study_id", "ViewPosition")}
    syntax_of: dict[str, str] = {}
    for r in rows:
        if r[col["ViewPosition"]].upper() not in VIEWS:
            continue
        subject, study, dicom = (r[col[k]] for k in ("subject_id", "study_id", "dicom_id"))
        path = src / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.dcm"
        if path.exists():
            meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
            syntax_of[dicom] = str(meta.TransferSyntaxUID)
    by_uid: dict[str, list[str]] = defaultdict(list)
    for dicom, uid in syntax_of.items():
        by_uid[uid].append(dicom)
    for uid, ids in sorted(by_uid.items()):
        write_root(src, dst / uid, set(ids))
        write_root(src, dst / f"{uid}.first", {ids[0]})
        print(uid, len(ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
