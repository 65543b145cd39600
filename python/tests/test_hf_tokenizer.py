"""Hugging Face's own `tokenizer.json` for CLIP, passed to `ingest tokenize`,
gives the same ids as the project's and as OpenAI's reference tokenizer.

The hub is out of reach, so the file is made the way Hugging Face makes it:
the vocabulary and merges of `openai/clip-vit-base-patch16` (the same BPE
vocabulary, in the layout of its `vocab.json` and `merges.txt`) handed to
`transformers`' `CLIPTokenizer`, saved with `save_pretrained`."""

import gzip
import json

from conftest import CLIP_DIR, run
from test_tokenizer_parity import report_texts


def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def hf_tokenizer_json(tmp_path):
    from transformers import CLIPTokenizer

    lines = gzip.open(CLIP_DIR / "bpe_simple_vocab_16e6.txt.gz", "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    alphabet = list(bytes_to_unicode().values())
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[tuple(m.split()) for m in merges])
    out = tmp_path / "hf"
    tok.save_pretrained(str(out))
    return out / "tokenizer.json"


def test_hugging_face_tokenizer_json_gives_the_same_ids(tmp_path, tokenizer_json, simple_tokenizer):
    hf = hf_tokenizer_json(tmp_path)
    texts = report_texts()[:1500]
    src = tmp_path / "texts.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    ours, theirs = tmp_path / "ours.jsonl", tmp_path / "theirs.jsonl"
    run("ingest", "tokenize", "--tokenizer", str(tokenizer_json), "--texts", str(src), "--out", str(ours))
    run("ingest", "tokenize", "--tokenizer", str(hf), "--texts", str(src), "--out", str(theirs))
    a = [json.loads(line)["ids"] for line in ours.read_text().splitlines()]
    b = [json.loads(line)["ids"] for line in theirs.read_text().splitlines()]
    assert len(a) == len(b) == len(texts)
    assert a == b
    assert all(ids == simple_tokenizer(t) for ids, t in zip(b, texts))
