"""`python/model_ref/mmclip_ref.py`, the reference the Rust training step is
held to (`crates/model/tests/step_parity.rs`): its mask and token counts
where the Rust test's batch cannot reach (λ2·N not an integer, candidate
sets of every size)."""

import importlib.util

import pytest

from conftest import ROOT

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

SCRIPT = ROOT / "python" / "model_ref" / "mmclip_ref.py"


@pytest.fixture(scope="module")
def ref():
    spec = importlib.util.spec_from_file_location("mmclip_ref", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_counts_are_exact_and_round_half_up(ref):
    assert ref.ceil_of(0.7, 10) == 7  # 0.7 * 10 is 7.000000000000001 in floats
    assert ref.ceil_of(0.2, 6) == 2
    assert ref.round_half_up(0.75, 10) == 8
    assert ref.round_half_up(0.25, 10) == 3  # Python's round(2.5) gives 2
    assert ref.round_half_up(0.75, 196) == 147


@pytest.mark.parametrize("n, lambda2", [(16, 0.75), (10, 0.25), (196, 0.75), (6, 0.75)])
def test_final_mask_takes_candidates_first_and_masks_round_lambda2_n(ref, n, lambda2):
    g = torch.Generator().manual_seed(n)
    b = 8
    noise = torch.rand(b, n, generator=g)
    # Candidate sets from empty to full, one size per row.
    sizes = torch.linspace(0, n, b).round().long()
    cands = torch.rand(b, n, generator=g).argsort(1).argsort(1) < sizes.unsqueeze(1)
    ids_keep, mask, ids_restore = ref.att_masking(cands, noise, lambda2)
    n_mask = ref.round_half_up(lambda2, n)
    assert mask.sum(1).tolist() == [n_mask] * b
    assert mask.gather(1, ids_keep).sum() == 0
    assert torch.equal(ids_restore.argsort(1).gather(1, ids_restore), torch.arange(n).expand(b, n))
    masked = mask.bool()
    for row in range(b):
        if cands[row].sum() >= n_mask:
            assert not (masked[row] & ~cands[row]).any()
        else:
            assert not (cands[row] & ~masked[row]).any()


def test_entity_selection_takes_ceil_lambda3_of_eligible_positions(ref):
    cfg = {"clip": {"text": {"eos_token_id": None}}, "mlm": {"kind": "entity", "p": 0.2}}
    # End-of-text (99) at 4, 9, 15; entity flags on the start token and in
    # the padding of row 1 are not eligible.
    ids = torch.zeros(3, 16, dtype=torch.long)
    for row, eot in enumerate([4, 9, 15]):
        ids[row, 0] = 1
        ids[row, 1:eot] = 7
        ids[row, eot] = 99
    entity = torch.zeros(3, 16, dtype=torch.bool)
    entity[0, 0:4] = True  # 3 eligible -> 1
    entity[1, 2:8] = True  # 6 eligible -> 2
    entity[1, 12] = True
    entity[2, 1:16] = True  # 15 eligible, end-of-text included -> 3
    noise = torch.rand(3, 16, generator=torch.Generator().manual_seed(0))
    sel = ref.select_tokens(cfg, ids, entity, noise)
    assert sel.sum(1).tolist() == [1, 2, 3]
    eligible = entity & ref.real_tokens(cfg, ids, False)
    assert not (sel & ~eligible).any()
