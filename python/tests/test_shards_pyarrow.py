"""Shards written by `ingest` read back with pyarrow, as a Python user would."""

import csv
import gzip
import hashlib

import numpy as np
import pyarrow.parquet as pq

from conftest import read_manifest

CHEXPERT = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
            "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion",
            "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices"]


def label_column(name: str) -> str:
    return "label_" + name.lower().replace(" ", "_")


def read_gz_csv(path):
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def read_folder(folder):
    manifest = read_manifest(folder)
    tables = []
    for shard in manifest["shards"]:
        path = folder / shard["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        table = pq.read_table(path)
        assert table.num_rows == shard["rows"]
        tables.append(table)
    return manifest, [row for t in tables for row in t.to_pylist()]


def test_mimic_shards_read_with_pyarrow_match_the_release(ingested, simple_tokenizer):
    world, mimic, _ = ingested
    manifest, rows = read_folder(mimic)
    counts = manifest["counts"]
    assert counts["seen"] == counts["written"] + counts["filtered"] + sum(counts["rejected"].values())
    assert counts["written"] == len(rows) > 0

    root = world / "mimic-cxr"
    meta = {r["dicom_id"]: r for r in read_gz_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz")}
    split = {r["dicom_id"]: r["split"] for r in read_gz_csv(root / "mimic-cxr-2.0.0-split.csv.gz")}
    labels = {(r["subject_id"], r["study_id"]): r for r in read_gz_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz")}
    frontal = {d for d, r in meta.items() if r["ViewPosition"] in ("PA", "AP")}
    assert {r["image_id"] for r in rows} == frontal

    for r in rows:
        m = meta[r["image_id"]]
        assert (r["subject_id"], r["study_id"]) == (m["subject_id"], m["study_id"])
        assert r["split"] == split[r["image_id"]]
        want = labels[(r["subject_id"], r["study_id"])]
        for name in CHEXPERT:
            cell = want[name]
            assert r[label_column(name)] == (None if cell == "" else int(float(cell))), name
        # Tokens are those of OpenAI's reference tokenizer on the stored text.
        assert r["token_ids"] == simple_tokenizer(r["text"]), r["text"]
        assert len(r["entity_mask"]) == len(r["token_ids"])
        for span in r["entity_spans"]:
            assert 0 <= span["start"] < span["end"] <= len(r["text"])
        if r["entity_spans"]:
            assert any(r["entity_mask"])
        img = np.frombuffer(r["image"], dtype=np.uint8).reshape(r["image_height"], r["image_width"])
        assert min(img.shape) == 128 and img.std() > 5


def test_padchest_shards_read_with_pyarrow(ingested):
    _, _, padchest = ingested
    manifest, rows = read_folder(padchest)
    assert manifest["source"] == "padchest"
    assert rows and all(not r["paired"] and r["token_ids"] is None for r in rows)
    assert all(isinstance(r["finding_labels"], list) for r in rows)
    by_patient = {}
    for r in rows:
        by_patient.setdefault(r["subject_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())
