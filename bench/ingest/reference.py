#!/usr/bin/env python3
"""The ingest benchmark's baseline: MIMIC-CXR to Parquet shards in plain Python.

This is the pipeline a competent user writes without `ingest`, from the
usual libraries, and it is what `bench/ingest/run.sh` times `ingest mimic`
against. Per image, in a `multiprocessing.Pool` of `--workers` processes:

- report: read `sSTUDY.txt`, split it into sections with the MIT-LCP header
  regex (`\\n ([A-Z ()/,-]+):\\s`), keep FINDINGS and IMPRESSION (the last
  occurrence wins; when both are missing, the text after the first blank
  line of the last section: `--sections` as in `ingest mimic`), decode HTML
  entities and collapse whitespace;
- tokens: the Hugging Face `tokenizers` package on the same `tokenizer.json`
  as `ingest`, truncated as CLIP does (`[SOT] ids [EOT]`, cut to 77, the
  last kept position overwritten by EOT);
- entities: a small lexicon as one compiled regex (the Rust tool's lexicon
  is larger; this keeps the step without claiming parity);
- DICOM: `pydicom.dcmread` + `.pixel_array` (pylibjpeg / openjpeg / rle
  plugins for compressed syntaxes), `apply_modality_lut` (rescale slope and
  intercept), min-max to 8 bits, `cv2.equalizeHist`, MONOCHROME1 inverted;
- JPEG (MIMIC-CXR-JPG): `cv2.imdecode` to 8-bit grey; already windowed by
  the release, so only resized;
- resize so the short side is 256, aspect kept: Pillow's antialiased
  Lanczos by default (the same filter as `ingest`), or `--resize area`
  (`cv2.INTER_AREA`, cheaper and also antialiased);
- labels: the CheXpert CSV through the `csv` module.

`imap` keeps the rows in plan order; the main process writes zstd Parquet
shards of `--rows-per-shard` rows in row groups of `--row-group-rows`, and
`summary.json` with the counts. Rows are sorted by (subject, study, image)
and views are filtered to PA/AP, as `ingest mimic` does by default, so the
two outputs can be compared row by row (`compare.py`).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import html
import io
import json
import multiprocessing as mp
import os
import re
import sys
import time
from pathlib import Path

CHEXPERT = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion",
    "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
]
CONTEXT = 77

# MIT-LCP mimic-cxr txt/section_parser.py: a header is an upper-case run at
# the start of a line (MIMIC indents every line by one space), then a colon.
HEADER = re.compile(r"\n ?([A-Z ()/,-]+):\s")
ADDENDUM_SEPARATOR = re.compile(r"\n\s*_{20,}\s*\n")
LEXICON = [
    "atelectasis", "cardiomegaly", "consolidation", "edema", "effusion", "pleural effusion",
    "pneumothorax", "pneumonia", "opacity", "opacities", "nodule", "mass", "fracture",
    "emphysema", "fibrosis", "infiltrate", "scarring", "hernia", "granuloma", "calcification",
    "cardiomediastinal silhouette", "heart", "lungs", "lung", "mediastinum", "hilar",
    "pulmonary vascular congestion", "vascular congestion", "pacemaker", "endotracheal tube",
    "nasogastric tube", "central venous catheter", "picc", "sternotomy wires", "clips",
    "thickening", "hyperinflation", "lesion", "collapse", "aorta", "tortuous",
]
LEXICON_RE = re.compile(r"\b(?:" + "|".join(sorted(map(re.escape, LEXICON), key=len, reverse=True)) + r")\b",
                        re.IGNORECASE)


# ---------------------------------------------------------------- planning --

def open_csv(root: Path, stem: str):
    for name in (stem + ".csv.gz", stem + ".csv"):
        p = root / name
        if p.exists():
            return gzip.open(p, "rt", newline="") if name.endswith(".gz") else open(p, newline="")
    raise SystemExit(f"{root}: no {stem}.csv[.gz]")


def plan(root: Path, views: set[str], fmt: str) -> list[tuple]:
    with open_csv(root, "mimic-cxr-2.0.0-split") as f:
        splits = {r["dicom_id"]: r["split"] for r in csv.DictReader(f)}
    labels = {}
    with open_csv(root, "mimic-cxr-2.0.0-chexpert") as f:
        for r in csv.DictReader(f):
            labels[(r["subject_id"], r["study_id"])] = tuple(
                None if r[c] == "" else int(float(r[c])) for c in CHEXPERT)
    items = []
    ext = ".dcm" if fmt == "dicom" else ".jpg"
    with open_csv(root, "mimic-cxr-2.0.0-metadata") as f:
        for r in csv.DictReader(f):
            view = r["ViewPosition"].strip()
            if view.upper() not in views or r["dicom_id"] not in splits:
                continue
            subj, study, dicom = r["subject_id"], r["study_id"], r["dicom_id"]
            d = root / "files" / f"p{subj[:2]}" / f"p{subj}"
            items.append((subj, study, dicom, view, splits[dicom],
                          labels.get((subj, study), (None,) * 14),
                          str(d / f"s{study}.txt"), str(d / f"s{study}" / (dicom + ext))))
    items.sort(key=lambda it: it[:3])
    return items


# ------------------------------------------------------------------ worker --

_TOK = None
_OPTS = None


def init_worker(tokenizer_path: str, opts: dict) -> None:
    global _TOK, _OPTS
    import cv2
    from tokenizers import Tokenizer
    cv2.setNumThreads(1)  # one process per core; no nested thread pools
    _TOK = Tokenizer.from_file(tokenizer_path)
    _OPTS = opts


def clean(s: str) -> str:
    return " ".join(html.unescape(s).split())


def sections(report: str) -> dict[str, str]:
    body = ADDENDUM_SEPARATOR.split(report)[-1]
    parts = HEADER.split("\n" + body)
    found: dict[str, str] = {}
    names = parts[1::2]
    texts = parts[2::2]
    for name, text in zip(names, texts):
        n = name.strip().lower()
        key = ("impression" if "impression" in n or "conclusion" in n
               else "findings" if "findings" in n
               else "comparison" if "comparison" in n
               else "indication" if "indication" in n or "reason" in n
               else None)
        if key and text.strip():
            found[key] = text.strip()
    if "findings" not in found and "impression" not in found:
        last = (texts[-1] if texts else parts[0]).split("\n \n")
        if len(last) > 1 and last[-1].strip():
            found["last_paragraph"] = last[-1].strip()
    return found


def tokenize(text: str) -> tuple[list[int], bool]:
    ids = _TOK.encode(text).ids  # post-processor adds [SOT] ... [EOT]
    if len(ids) <= CONTEXT:
        return ids, False
    eot = ids[-1]
    ids = ids[:CONTEXT]
    ids[-1] = eot
    return ids, True


def target_size(w: int, h: int, short: int) -> tuple[int, int]:
    if w <= h:
        return short, max(1, (h * short + w // 2) // w)
    return max(1, (w * short + h // 2) // h), short


def resize(u8, short: int):
    import cv2
    import numpy as np
    from PIL import Image
    h, w = u8.shape
    nw, nh = target_size(w, h, short)
    if _OPTS["resize"] == "area":
        return cv2.resize(u8, (nw, nh), interpolation=cv2.INTER_AREA)
    return np.asarray(Image.fromarray(u8).resize((nw, nh), Image.Resampling.LANCZOS))


def load_dicom(path: str):
    import cv2
    import numpy as np
    import pydicom
    from pydicom.pixels import apply_modality_lut
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array
    values = apply_modality_lut(stored, ds)
    lo, hi = float(values.min()), float(values.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    u8 = ((values - lo) * scale).astype(np.uint8)
    u8 = cv2.equalizeHist(u8)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        u8 = 255 - u8
    return u8, int(ds.Rows), int(ds.Columns), int(ds.BitsStored), str(ds.PhotometricInterpretation)


def load_jpeg(path: str):
    import cv2
    import numpy as np
    u8 = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if u8 is None:
        raise ValueError("JPEG decode failed")
    return u8, u8.shape[0], u8.shape[1], 8, "MONOCHROME2"


def process(item: tuple):
    subj, study, dicom, view, split, labels, report_path, image_path = item
    try:
        with open(report_path, encoding="utf-8", errors="replace") as f:
            report = f.read()
        secs = sections(report)
        text = " ".join(clean(secs[k]) for k in _OPTS["sections"] if k in secs)
        if not text:
            return ("reject", dicom, f"none of the sections {_OPTS['sections']}")
        ids, truncated = tokenize(text)
        spans = [{"start": m.start(), "end": m.end(), "label": "ENTITY"} for m in LEXICON_RE.finditer(text)]
        if image_path.endswith(".dcm"):
            u8, rows, cols, bits, photometric = load_dicom(image_path)
        else:
            u8, rows, cols, bits, photometric = load_jpeg(image_path)
        small = resize(u8, _OPTS["short_side"])
    except Exception as e:  # a bad file is a reject, not a crash
        return ("reject", dicom, f"{type(e).__name__}: {e}")
    return ("row", {
        "source": "mimic", "subject_id": subj, "study_id": study, "image_id": dicom,
        "split": split, "view": view, "paired": True,
        "image": small.tobytes(), "image_height": small.shape[0], "image_width": small.shape[1],
        "orig_rows": rows, "orig_cols": cols, "bits_stored": bits, "photometric": photometric,
        "report": report, "findings": secs.get("findings"), "impression": secs.get("impression"),
        "text": text, "token_ids": ids, "truncated": truncated, "entity_spans": spans,
        **{f"label_{c.lower().replace(' ', '_')}": v for c, v in zip(CHEXPERT, labels)},
    })


# ------------------------------------------------------------------ writer --

def schema():
    import pyarrow as pa
    fields = [
        ("source", pa.string()), ("subject_id", pa.string()), ("study_id", pa.string()),
        ("image_id", pa.string()), ("split", pa.string()), ("view", pa.string()),
        ("paired", pa.bool_()), ("image", pa.binary()), ("image_height", pa.int32()),
        ("image_width", pa.int32()), ("orig_rows", pa.int32()), ("orig_cols", pa.int32()),
        ("bits_stored", pa.int32()), ("photometric", pa.string()), ("report", pa.string()),
        ("findings", pa.string()), ("impression", pa.string()), ("text", pa.string()),
        ("token_ids", pa.list_(pa.int32())), ("truncated", pa.bool_()),
        ("entity_spans", pa.list_(pa.struct([("start", pa.int32()), ("end", pa.int32()),
                                             ("label", pa.string())]))),
    ]
    fields += [(f"label_{c.lower().replace(' ', '_')}", pa.int8()) for c in CHEXPERT]
    return pa.schema(fields)


def write_shard(out: Path, index: int, rows: list[dict], row_group: int) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq
    sch = schema()
    table = pa.Table.from_pylist(rows, schema=sch)
    path = out / f"shard-{index:05d}.parquet"
    pq.write_table(table, path, compression="zstd", row_group_size=row_group)
    return path.name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="MIMIC-CXR or MIMIC-CXR-JPG root")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--format", choices=["dicom", "jpg"], default="dicom")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--tokenizer", default=".cache/clip/tokenizer.json")
    ap.add_argument("--short-side", type=int, default=256)
    ap.add_argument("--resize", choices=["lanczos", "area"], default="lanczos")
    ap.add_argument("--views", default="PA,AP")
    ap.add_argument("--sections", default="findings,impression,last_paragraph",
                    help="sections joined into the training text, as `ingest mimic --sections` "
                         "(last_paragraph exists only when FINDINGS and IMPRESSION do not)")
    ap.add_argument("--rows-per-shard", type=int, default=1024)
    ap.add_argument("--row-group-rows", type=int, default=256)
    a = ap.parse_args()

    t0 = time.monotonic()
    items = plan(a.root, {v.strip().upper() for v in a.views.split(",")}, a.format)
    a.out.mkdir(parents=True, exist_ok=True)
    opts = {"short_side": a.short_side, "resize": a.resize, "sections": a.sections.split(",")}
    rows, shards, rejects = [], [], []
    with mp.Pool(a.workers, initializer=init_worker, initargs=(a.tokenizer, opts)) as pool:
        for kind, payload, *reason in pool.imap(process, items):
            if kind == "reject":
                rejects.append({"image_id": payload, "reason": reason[0]})
                continue
            rows.append(payload)
            if len(rows) == a.rows_per_shard:
                shards.append(write_shard(a.out, len(shards), rows, a.row_group_rows))
                rows = []
    if rows:
        shards.append(write_shard(a.out, len(shards), rows, a.row_group_rows))
    written = len(items) - len(rejects)
    summary = {"planned": len(items), "written": written, "rejected": len(rejects),
               "shards": shards, "rejects": rejects[:20], "seconds": round(time.monotonic() - t0, 3),
               "workers": a.workers, "format": a.format, "resize": a.resize}
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{a.out}: {written} rows in {len(shards)} shards, {len(rejects)} rejected, "
          f"{summary['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
