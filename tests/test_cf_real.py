"""The collaborative pipeline on the real Amazon Instruments data (skips where ../shared/data is absent)."""

import pytest
import torch

from fastrec.data import leave_one_out, load_lcrec
from fastrec.eval import select_rows
from fastrec.ops import topk_scores
from fastrec.recipes.cf import TrainConfig, build_model, evaluate, popularity_baseline, train

_CACHE = {}


@pytest.fixture
def instruments(shared_data):
    """The leave-one-out split, loaded once per session (the fixture it needs is function-scoped)."""
    if "split" not in _CACHE:
        _CACHE["split"] = leave_one_out(load_lcrec(shared_data / "amazon-instruments"))
    return _CACHE["split"]


@pytest.mark.real_data
def test_instruments_shape_and_popularity_baseline(instruments):
    split = instruments
    assert (split.data.num_users, split.data.num_items) == (24_772, 9_922)
    pop = popularity_baseline(split, "test")
    # brute force on the first 2,000 test users: rank of the target among unseen items by popularity
    _, items = split.train.pairs()
    counts = torch.bincount(items, minlength=split.data.num_items).float()
    users, targets = split.test_users[:2000], split.test_targets[:2000]
    indptr, indices = select_rows(*split.seen("test"), users)
    hits = 0
    for r in range(users.numel()):
        score = counts.clone()
        score[indices[indptr[r]:indptr[r + 1]]] = -1
        t = targets[r]
        better = (score > score[t]).sum() + ((score == score[t]) & (torch.arange(score.numel()) < t)).sum()
        hits += int(better < 10)
    _, ids = topk_scores(torch.ones(2000, 1), counts[:, None], 10, (indptr, indices))
    assert hits / 2000 == pytest.approx((ids == targets[:, None]).any(1).float().mean().item())
    assert 0.0 < pop["HR@10"] < 0.2


@pytest.mark.real_data
@pytest.mark.slow
def test_instruments_lightgcn_learns_and_never_ranks_seen_items(instruments):
    split = instruments
    torch.manual_seed(0)
    model = build_model("lightgcn", split, dim=32, num_layers=2)
    before = evaluate(model, split, "valid")["NDCG@10"]
    train(model, split, TrainConfig(epochs=1, batch_size=8192, lr=1e-2, progress=False))
    after = evaluate(model, split, "valid")["NDCG@10"]
    assert after > before
    users, items = model()
    indptr, indices = split.seen("test")
    _, ids = topk_scores(users.detach()[:500], items.detach(), 20, (indptr[:501], indices[:int(indptr[500])]))
    for u in range(500):
        seen = set(indices[indptr[u]:indptr[u + 1]].tolist())
        assert not seen & set(ids[u].tolist())
