"""Text that needs CLIP's cleaning (HTML entities, curly quotes, ligatures,
full-width letters, control characters, accents) gets the ids of OpenAI's
reference tokenizer, which runs ftfy and unescapes HTML before its BPE.
`train embed --texts` goes through the same cleaning (tests/e2e/text.rs)."""

import json

from conftest import run

ODD = [
    "Tube tip &amp;gt; 2 cm above the carina &amp; stable.",
    "\u201cSmall\u201d left effusion, \u2018likely\u2019 atelectasis",
    "\ufb01brosis of the right apex, \uff23\uff34\u3000scan advised",
    "caf\u00e9 na\u00efve \u00c9panchement pleural, d\u00e9j\u00e0 vu",
    "no\u00a0acute\u2003cardiopulmonary\u200bprocess\x00\ufeff",
    "heart size is normal.",
]


def test_ingest_tokenize_matches_openai_on_odd_text(tmp_path, tokenizer_json, simple_tokenizer):
    src = tmp_path / "texts.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in ODD))
    out = tmp_path / "ids.jsonl"
    run("ingest", "tokenize", "--tokenizer", str(tokenizer_json), "--texts", str(src), "--out", str(out))
    got = [json.loads(line)["ids"] for line in out.read_text().splitlines()]
    want = [simple_tokenizer(t) for t in ODD]
    assert got == want

