"""Tests of python/ner_sidecar.py with the offline blank pipeline (no ScispaCy model needed).

Run: .venv/bin/python -m pytest python/tests
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "ner_sidecar.py"
_spec = importlib.util.spec_from_file_location("ner_sidecar", SCRIPT)
ner_sidecar = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ner_sidecar)

STUDIES = [
    {"study_id": "50414267", "text": "Small left Pleural Effusion. No pneumothorax."},
    # Non-ASCII before an entity: offsets must count characters, not bytes.
    {"study_id": "50414268", "text": "Angle 30° — café. Cardiomegaly; lungs clear 🙂 edema."},
    {"study_id": "50414269", "text": ""},
    {"study_id": "50414270", "text": "  Leading spaces and\nnewline kept: effusion  "},
]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_blank_pipeline_writes_one_line_per_study_with_python_offsets(tmp_path):
    src, out = tmp_path / "sections.jsonl", tmp_path / "ner.jsonl"
    write_jsonl(src, STUDIES)
    proc = run_cli(str(src), str(out), "--ruler-patterns", "builtin")
    assert proc.returncode == 0, proc.stderr

    lines = read_jsonl(out)
    assert [l["study_id"] for l in lines] == [s["study_id"] for s in STUDIES]
    for line, study in zip(lines, STUDIES):
        assert line["text"] == study["text"]  # copied unchanged, whitespace included
        for e in line["entities"]:
            assert 0 <= e["start"] < e["end"] <= len(line["text"])
            assert line["text"][e["start"]:e["end"]] == e["text"]
            assert e["label"] == "ENTITY"

    found = [[e["text"] for e in l["entities"]] for l in lines]
    assert found == [
        ["Pleural Effusion", "pneumothorax"],
        ["Cardiomegaly", "lungs", "edema"],
        [],
        ["effusion"],
    ]
    text = STUDIES[1]["text"]
    cardio = lines[1]["entities"][0]
    assert (cardio["start"], cardio["end"]) == (text.index("Cardiomegaly"), text.index("Cardiomegaly") + 12)
    assert cardio["start"] != text.encode("utf-8").index(b"Cardiomegaly")
    edema = lines[1]["entities"][2]
    assert edema["start"] == text.index("edema")  # after an astral-plane character


def test_patterns_file_accepts_phrases_and_pattern_objects(tmp_path):
    patterns = tmp_path / "patterns.jsonl"
    write_jsonl(patterns, [
        {"pattern": "hilar"},
        {"label": "DEVICE", "pattern": [{"LOWER": "ng"}, {"LOWER": "tube"}]},
    ])
    nlp = ner_sidecar.build_pipeline("unused", str(patterns))
    [line] = ner_sidecar.sidecar_lines(nlp, [("1", "Hilar fullness. NG tube in place.")])
    assert [(e["text"], e["label"]) for e in line["entities"]] == [("Hilar", "ENTITY"), ("NG tube", "DEVICE")]

    as_list = tmp_path / "patterns.json"
    as_list.write_text(json.dumps(["costophrenic angle"]), encoding="utf-8")
    nlp = ner_sidecar.build_pipeline("unused", str(as_list))
    [line] = ner_sidecar.sidecar_lines(nlp, [("2", "Blunted Costophrenic Angle.")])
    assert [(e["start"], e["end"]) for e in line["entities"]] == [(8, 26)]


def test_bad_input_fails_and_leaves_existing_output_untouched(tmp_path):
    src, out = tmp_path / "sections.jsonl", tmp_path / "ner.jsonl"
    out.write_text("previous run\n", encoding="utf-8")
    src.write_text('{"study_id": "1", "text": "ok"}\n{"study_id": 2, "text": "x"}\n', encoding="utf-8")
    proc = run_cli(str(src), str(out), "--ruler-patterns", "builtin")
    assert proc.returncode == 2
    assert ":2:" in proc.stderr
    assert out.read_text(encoding="utf-8") == "previous run\n"

    write_jsonl(src, [{"study_id": "1", "text": "a"}, {"study_id": "1", "text": "b"}])
    proc = run_cli(str(src), str(out), "--ruler-patterns", "builtin")
    assert proc.returncode == 2 and "already on line 1" in proc.stderr


def test_failed_write_removes_the_temporary_file(tmp_path):
    out = tmp_path / "ner.jsonl"

    def records():
        yield {"study_id": "1", "text": "x", "entities": []}
        raise RuntimeError("pipeline crashed")

    with pytest.raises(RuntimeError):
        ner_sidecar.write_atomically(out, records())
    assert list(tmp_path.iterdir()) == []


def test_output_is_utf8_and_not_ascii_escaped(tmp_path):
    src, out = tmp_path / "sections.jsonl", tmp_path / "ner.jsonl"
    write_jsonl(src, [STUDIES[1]])
    assert run_cli(str(src), str(out), "--ruler-patterns", "builtin").returncode == 0
    raw = out.read_text(encoding="utf-8")
    assert "30°" in raw and raw.endswith("\n") and raw.count("\n") == 1
