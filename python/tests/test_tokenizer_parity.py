"""`ingest tokenize` gives the ids of OpenAI's reference CLIP tokenizer on
the 3,955 real Indiana University reports in ../shared."""

import json
import re
import tarfile

from conftest import SHARED, run


def report_texts():
    path = SHARED / "data" / "reports" / "NLMCXR_reports.tgz"
    assert path.is_file(), f"{path} missing"
    texts = []
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.name.endswith(".xml"):
                continue
            xml = tar.extractfile(member).read().decode("utf-8")
            parts = re.findall(r'<AbstractText Label="(FINDINGS|IMPRESSION)">(.*?)</AbstractText>', xml, re.S)
            text = " ".join(body for _, body in parts).strip()
            if text:
                texts.append(text)
    return texts


def test_ids_match_openai_tokenizer_on_real_reports(tmp_path, tokenizer_json, simple_tokenizer):
    texts = report_texts()
    assert len(texts) > 3000
    src = tmp_path / "texts.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "ids.jsonl"
    run("ingest", "tokenize", "--tokenizer", str(tokenizer_json), "--texts", str(src), "--out", str(out))
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(got) == len(texts)
    mismatches = [(t, g["ids"]) for t, g in zip(texts, got) if g["ids"] != simple_tokenizer(t)]
    assert not mismatches, f"{len(mismatches)} reports differ, first: {mismatches[0][0]!r}"
    truncated = sum(g["truncated"] for g in got)
    assert 0 < truncated < len(texts), "some real reports exceed 77 tokens"
