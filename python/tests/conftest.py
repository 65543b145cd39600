"""Fixtures shared by the Python tests: paths, the binaries, the reference
CLIP tokenizer, and one synthetic world ingested once per session."""

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
CLIP_DIR = ROOT / ".cache" / "clip"


def binary(name: str) -> Path:
    path = ROOT / "target" / "debug" / name
    assert path.is_file(), f"{path} not built: run `cargo build --workspace --bins`"
    return path


def run(name: str, *args: str) -> str:
    res = subprocess.run([str(binary(name)), *args], capture_output=True, text=True)
    assert res.returncode == 0, f"{name} {args} failed:\n{res.stderr}"
    return res.stdout


@pytest.fixture(scope="session")
def tokenizer_json() -> Path:
    path = CLIP_DIR / "tokenizer.json"
    assert path.is_file(), f"{path} missing: run scripts/setup.sh"
    return path


@pytest.fixture(scope="session")
def simple_tokenizer():
    """OpenAI's reference tokenizer as open_clip ships it. Its module imports
    torch only for the tensor that `__call__` returns; `encode` does not need
    it. Where torch is not installed, a stand-in is lent for the import and
    taken back at once, so other packages never see it."""
    spec = importlib.util.spec_from_file_location("clip_tokenizer", CLIP_DIR / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    if importlib.util.find_spec("torch") is None:
        stand_in = types.ModuleType("torch")
        stand_in.__getattr__ = lambda name: object  # type annotations such as torch.LongTensor
        sys.modules["torch"] = stand_in
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules["torch"]
    else:
        spec.loader.exec_module(module)
    tok = module.SimpleTokenizer()

    def encode(text: str, context_length: int = 77) -> list[int]:
        # open_clip's __call__: [SOT] + ids + [EOT], cut to the context with EOT last.
        ids = [tok.sot_token_id] + tok.encode(text) + [tok.eot_token_id]
        if len(ids) > context_length:
            ids = ids[:context_length]
            ids[-1] = tok.eot_token_id
        return ids

    return encode


@pytest.fixture(scope="session")
def ingested(tmp_path_factory, tokenizer_json):
    """A synthetic world with both sources ingested: (world dir, mimic shards, padchest shards)."""
    tmp = tmp_path_factory.mktemp("world")
    world = tmp / "world"
    run("synth", "--out", str(world), "--studies", "30", "--padchest-images", "30", "--size", "160")
    mimic, padchest = tmp / "mimic", tmp / "padchest"
    run("ingest", "mimic", "--root", str(world / "mimic-cxr"), "--out", str(mimic),
        "--tokenizer", str(tokenizer_json), "--ner", str(world / "mimic-cxr" / "ner_sidecar.jsonl"),
        "--short-side", "128")
    run("ingest", "padchest", "--images-only", "--root", str(world / "padchest"), "--out", str(padchest),
        "--short-side", "128")
    return world, mimic, padchest


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())
