#!/usr/bin/env python3
"""Write the ScispaCy NER sidecar that `ingest` reads (crates/text/src/entities.rs).

Input: JSON Lines of {"study_id": "...", "text": "..."}, as `ingest sections`
exports them: exactly the training text of each study. Output: one line per
input line, in the same order:

    {"study_id": "50414267", "text": "<the text NER ran on>",
     "entities": [{"start": 0, "end": 8, "label": "ENTITY", "text": "effusion"}]}

`start`/`end` are character offsets (Python string indices), end exclusive, so
`text[start:end] == entity["text"]`. The text is copied unchanged: ingest
rejects a study whose sidecar text differs from its training text.

Pipelines:
  --model en_core_sci_sm      (default) any installed spaCy/ScispaCy model;
                              ScispaCy's small/medium/large models label ENTITY.
  --ruler-patterns FILE       spacy.blank("en") + entity_ruler, offline, with
                              patterns from FILE (JSON list or JSON Lines of
                              phrases or spaCy pattern objects);
  --ruler-patterns builtin    the same with a small built-in phrase list.
Ruler phrases match case-insensitively; spans without a label get ENTITY.

The output is written to a temporary file beside OUTPUT and renamed onto it,
so OUTPUT is either the old file or the complete new one.

Example:
    python python/ner_sidecar.py sections.jsonl ner.jsonl --model en_core_sci_sm
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

ENTITY = "ENTITY"

# Offline default for --ruler-patterns builtin: common chest radiography terms.
BUILTIN_PHRASES = [
    "pleural effusion", "effusion", "pneumothorax", "cardiomegaly", "atelectasis",
    "consolidation", "opacity", "opacities", "edema", "pulmonary edema", "pneumonia",
    "nodule", "mass", "fracture", "emphysema", "endotracheal tube", "nasogastric tube",
    "central venous catheter", "picc", "pacemaker", "lung", "lungs", "heart",
    "mediastinum", "hilar", "costophrenic angle", "hemidiaphragm",
]


class InputError(Exception):
    """A line of the input file that cannot be processed."""


def read_studies(path: Path) -> list[tuple[str, str]]:
    """(study_id, text) for every non-blank line of a JSON Lines file."""
    studies: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not JSON: {e}") from e
            study_id, text = (obj.get("study_id"), obj.get("text")) if isinstance(obj, dict) else (None, None)
            if not isinstance(study_id, str) or not isinstance(text, str):
                raise InputError(f'{path}:{n}: needs string fields "study_id" and "text"')
            if study_id in seen:
                raise InputError(f"{path}:{n}: study {study_id} already on line {seen[study_id]}")
            seen[study_id] = n
            studies.append((study_id, text))
    return studies


def load_patterns(source: str) -> list[dict]:
    """entity_ruler patterns from a file, or the built-in list for `builtin`."""
    if source == "builtin":
        items: list = list(BUILTIN_PHRASES)
    else:
        raw = Path(source).read_text(encoding="utf-8").strip()
        if raw.startswith("["):
            items = json.loads(raw)
        else:
            items = [json.loads(line) for line in raw.splitlines() if line.strip()]
    patterns = []
    for item in items:
        if isinstance(item, str):
            patterns.append({"label": ENTITY, "pattern": item})
        elif isinstance(item, dict) and "pattern" in item:
            patterns.append({"label": item.get("label", ENTITY), "pattern": item["pattern"]})
        else:
            raise ValueError(f"not a pattern: {item!r}")
    return patterns


def build_pipeline(model: str, ruler_patterns: str | None):
    """The spaCy pipeline: a blank English one with a ruler, or a loaded model."""
    import spacy  # imported here so --help works without spaCy installed

    if ruler_patterns is None:
        return spacy.load(model)
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler", config={"phrase_matcher_attr": "LOWER"})
    ruler.add_patterns(load_patterns(ruler_patterns))
    return nlp


def sidecar_lines(nlp, studies: list[tuple[str, str]], batch_size: int = 256) -> Iterator[dict]:
    """One sidecar record per study, in input order."""
    docs = nlp.pipe((text for _, text in studies), batch_size=batch_size)
    for (study_id, text), doc in zip(studies, docs):
        yield {
            "study_id": study_id,
            "text": text,
            "entities": [
                {"start": e.start_char, "end": e.end_char, "label": e.label_, "text": e.text}
                for e in doc.ents
            ],
        }


def write_atomically(path: Path, records: Iterable[dict]) -> int:
    """Writes JSON Lines to a temp file beside `path`, then renames it onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help='JSON Lines of {"study_id", "text"}')
    parser.add_argument("output", type=Path, help="the sidecar to write")
    parser.add_argument("--model", default="en_core_sci_sm", help="spaCy model for spacy.load (default: %(default)s)")
    parser.add_argument(
        "--ruler-patterns",
        metavar="FILE|builtin",
        help="use spacy.blank('en') + entity_ruler with these patterns instead of --model",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="texts per nlp.pipe batch")
    args = parser.parse_args(argv)

    try:
        studies = read_studies(args.input)
    except (OSError, InputError) as e:
        print(f"ner_sidecar: {e}", file=sys.stderr)
        return 2
    try:
        nlp = build_pipeline(args.model, args.ruler_patterns)
    except (OSError, ValueError) as e:  # model not installed, bad patterns file
        print(f"ner_sidecar: {e}\n(ScispaCy models install from their release URLs; "
              "--ruler-patterns builtin runs offline)", file=sys.stderr)
        return 2
    n = write_atomically(args.output, sidecar_lines(nlp, studies, args.batch_size))
    print(f"ner_sidecar: wrote {n} studies to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
