"""fastrec.eval: hand-computed values, sklearn / brute-force references, properties and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from fastrec.eval import auc, evaluate_topk, hit_rate, mrr, ndcg, recall, uauc

TOPK = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
TARGET = torch.tensor([2, 6, 0])  # rank 2, rank 3, miss
L2 = math.log2


# ----------------------------------------------------------------------------- brute-force reference


def ref_topk(topk: list[list[int]], targets: list[set[int]], k: int) -> dict[str, float]:
    """Plain-python per-user loop; users without targets are skipped."""
    acc = {"HR": [], "Recall": [], "NDCG": [], "MRR": []}
    for row, tset in zip(topk, targets, strict=True):
        if not tset:
            continue
        hits = [j for j, x in enumerate(row[:k]) if x in tset]
        acc["HR"].append(1.0 if hits else 0.0)
        acc["Recall"].append(len(hits) / len(tset))
        idcg = sum(1 / L2(j + 2) for j in range(min(len(tset), k)))
        acc["NDCG"].append(sum(1 / L2(j + 2) for j in hits) / idcg)
        acc["MRR"].append(1 / (hits[0] + 1) if hits else 0.0)
    return {m: (sum(v) / len(v) if v else math.nan) for m, v in acc.items()}


def to_csr(sets: list[set[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [len(s) for s in sets]
    indptr = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int64)
    indices = torch.tensor([x for s in sets for x in sorted(s)], dtype=torch.int64)
    return indptr, indices


def ref_uauc(scores: np.ndarray, labels: np.ndarray, users: np.ndarray) -> float:
    vals = [
        roc_auc_score(labels[users == u], scores[users == u])
        for u in np.unique(users)
        if len(set(labels[users == u].tolist())) == 2
    ]
    return float(np.mean(vals)) if vals else math.nan


# ----------------------------------------------------------------------------- hand-computed


def test_hand_computed_single_target() -> None:
    assert hit_rate(TOPK, TARGET).item() == pytest.approx(2 / 3)
    assert recall(TOPK, TARGET).item() == pytest.approx(2 / 3)
    assert ndcg(TOPK, TARGET).item() == pytest.approx((1 / L2(3) + 1 / L2(4)) / 3)
    assert mrr(TOPK, TARGET).item() == pytest.approx((1 / 2 + 1 / 3) / 3)
    assert hit_rate(TOPK, TARGET, k=1).item() == 0.0
    assert hit_rate(TOPK, TARGET, k=2).item() == pytest.approx(1 / 3)
    assert mrr(TOPK, TARGET, k=2).item() == pytest.approx(1 / 6)


def test_hand_computed_multi_target() -> None:
    csr = to_csr([{1, 3}, set(), {6, 100}])
    per_user = ndcg(TOPK, csr, reduction="none")
    assert per_user[0].item() == pytest.approx((1 + 1 / L2(4)) / (1 + 1 / L2(3)))
    assert math.isnan(per_user[1].item())
    assert per_user[2].item() == 0.0
    assert recall(TOPK, to_csr([{1, 3}, {5}, {9, 100}])).item() == pytest.approx((1 + 1 + 0.5) / 3)
    assert mrr(TOPK, csr).item() == pytest.approx(0.5)


def test_reduction_none_and_evaluate_topk() -> None:
    per = hit_rate(TOPK, TARGET, reduction="none")
    assert per.tolist() == [1.0, 1.0, 0.0] and per.dtype == torch.float64
    out = evaluate_topk(TOPK, TARGET, ks=(1, 3), metrics=("HR", "NDCG", "Recall", "MRR"))
    assert list(out) == ["HR@1", "HR@3", "NDCG@1", "NDCG@3", "Recall@1", "Recall@3", "MRR@1", "MRR@3"]
    assert out["HR@3"] == pytest.approx(2 / 3) and out["HR@1"] == 0.0
    assert out["NDCG@3"] == pytest.approx(ndcg(TOPK, TARGET, 3).item())


def test_empty_inputs() -> None:
    empty = torch.empty((0, 5), dtype=torch.int64)
    assert math.isnan(hit_rate(empty, torch.empty(0, dtype=torch.int64)).item())
    assert hit_rate(empty, torch.empty(0, dtype=torch.int64), reduction="none").shape == (0,)
    assert math.isnan(evaluate_topk(empty, torch.empty(0, dtype=torch.int64), ks=(5,))["HR@5"])
    assert math.isnan(ndcg(TOPK, to_csr([set(), set(), set()])).item())
    assert math.isnan(auc(torch.empty(0), torch.empty(0)).item())
    assert math.isnan(auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])).item())
    assert math.isnan(uauc(torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.int64)).item())
    assert math.isnan(uauc(torch.tensor([0.1, 0.2]), torch.tensor([1, 0]), torch.tensor([0, 1])).item())


def test_auc_hand_and_ties() -> None:
    assert auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])).item() == pytest.approx(0.75)
    assert auc(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0, 1, 1])).item() == pytest.approx(0.5)
    assert auc(torch.tensor([1.0, 2.0]), torch.tensor([True, False])).item() == 0.0


def test_uauc_hand() -> None:
    scores = torch.tensor([0.9, 0.1, 0.2, 0.8, 0.5, 0.4])
    labels = torch.tensor([1, 0, 1, 0, 1, 1])
    users = torch.tensor([7, 7, 3, 3, 5, 5])  # user 7 auc 1, user 3 auc 0, user 5 skipped
    assert uauc(scores, labels, users).item() == pytest.approx(0.5)
    w = uauc(
        torch.cat([scores, torch.tensor([0.3, 0.2])]),
        torch.cat([labels, torch.tensor([0, 0])]),
        torch.cat([users, torch.tensor([7, 7])]),
        weighted=True,
    )
    assert w.item() == pytest.approx((4 * 1.0 + 2 * 0.0) / 6)


# ----------------------------------------------------------------------------- references


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = 500
    scores = torch.randint(0, 20, (n,), generator=g).float() / 7  # many ties
    labels = torch.randint(0, 2, (n,), generator=g)
    assert auc(scores, labels).item() == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)
    users = torch.randint(0, 40, (n,), generator=g)
    expect = ref_uauc(scores.numpy(), labels.numpy(), users.numpy())
    assert uauc(scores, labels, users).item() == pytest.approx(expect, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_topk_matches_bruteforce(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_users, width, num_items = 50, 12, 30
    topk = np.stack([rng.permutation(num_items)[:width] for _ in range(num_users)])
    sets = [set(rng.choice(num_items, rng.integers(0, 5), replace=False).tolist()) for _ in range(num_users)]
    single = rng.integers(0, num_items, num_users)
    tk = torch.from_numpy(topk)
    for k in (1, 5, 12):
        ref = ref_topk(topk.tolist(), sets, k)
        got = evaluate_topk(tk, to_csr(sets), ks=(k,), metrics=("HR", "Recall", "NDCG", "MRR"))
        for m in ref:
            assert got[f"{m}@{k}"] == pytest.approx(ref[m], abs=1e-12)
        ref1 = ref_topk(topk.tolist(), [{int(t)} for t in single], k)
        got1 = evaluate_topk(tk, torch.from_numpy(single), ks=(k,), metrics=("HR", "Recall", "NDCG", "MRR"))
        for m in ref1:
            assert got1[f"{m}@{k}"] == pytest.approx(ref1[m], abs=1e-12)


# ----------------------------------------------------------------------------- properties


@st.composite
def ranked(draw):  # noqa: ANN201
    num_users = draw(st.integers(1, 8))
    width = draw(st.integers(1, 6))
    num_items = draw(st.integers(width, 12))
    rows = [draw(st.permutations(range(num_items)))[:width] for _ in range(num_users)]
    sets = [set(draw(st.lists(st.integers(0, num_items - 1), max_size=4))) for _ in range(num_users)]
    return rows, sets, width


@settings(max_examples=60, deadline=None)
@given(ranked())
def test_property_bounds_and_reference(data) -> None:  # noqa: ANN001
    rows, sets, width = data
    tk = torch.tensor(rows)
    csr = to_csr(sets)
    prev_hr = -1.0
    for k in range(1, width + 1):
        got = evaluate_topk(tk, csr, ks=(k,), metrics=("HR", "Recall", "NDCG", "MRR"))
        ref = ref_topk(rows, sets, k)
        for m, v in ref.items():
            if math.isnan(v):
                assert math.isnan(got[f"{m}@{k}"])
                continue
            assert got[f"{m}@{k}"] == pytest.approx(v, abs=1e-12)
            assert 0.0 <= got[f"{m}@{k}"] <= 1.0 + 1e-12
        if not math.isnan(got[f"HR@{k}"]):
            assert got[f"HR@{k}"] >= prev_hr  # HR is monotone in k
            assert got[f"MRR@{k}"] <= got[f"HR@{k}"] + 1e-12
            prev_hr = got[f"HR@{k}"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1), st.integers(0, 3)), min_size=1, max_size=40))
def test_property_auc_uauc(samples) -> None:  # noqa: ANN001
    scores = torch.tensor([float(s) for s, _, _ in samples])
    labels = torch.tensor([y for _, y, _ in samples])
    users = torch.tensor([u for _, _, u in samples])
    got = auc(scores, labels).item()
    if len(set(labels.tolist())) == 2:
        assert got == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)
        assert auc(-scores, labels).item() == pytest.approx(1 - got, abs=1e-12)
    else:
        assert math.isnan(got)
    expect = ref_uauc(scores.numpy(), labels.numpy(), users.numpy())
    got_u = uauc(scores, labels, users).item()
    assert (math.isnan(expect) and math.isnan(got_u)) or got_u == pytest.approx(expect, abs=1e-12)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fn", [hit_rate, recall, ndcg, mrr])
def test_topk_bad_input(fn) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="topk_ids"):
        fn(TOPK[0], TARGET)  # 1-D
    with pytest.raises(ValueError, match="topk_ids"):
        fn(TOPK.float(), TARGET)
    with pytest.raises(ValueError, match="topk_ids"):
        fn(TOPK - 5, TARGET)
    with pytest.raises(ValueError, match="topk_ids"):
        fn(TOPK.tolist(), TARGET)
    with pytest.raises(ValueError, match="targets"):
        fn(TOPK, TARGET[:2])
    with pytest.raises(ValueError, match="targets"):
        fn(TOPK, torch.tensor([1, -1, 2]))
    with pytest.raises(ValueError, match="targets"):
        fn(TOPK, TARGET.float())
    with pytest.raises(ValueError, match="targets indptr"):
        fn(TOPK, (torch.tensor([0, 1, 2]), torch.tensor([1, 2])))  # U+1 mismatch
    with pytest.raises(ValueError, match="targets indptr"):
        fn(TOPK, (torch.tensor([0, 2, 1, 2]), torch.tensor([1, 2])))  # decreasing
    with pytest.raises(ValueError, match="targets indices"):
        fn(TOPK, (torch.tensor([0, 1, 1, 2]), torch.tensor([1, -2])))
    with pytest.raises(ValueError, match="targets"):
        fn(TOPK, (torch.tensor([0, 1, 1, 2]),))
    for k in (0, -1, 4):
        with pytest.raises(ValueError, match="k must"):
            fn(TOPK, TARGET, k)
    with pytest.raises(ValueError, match="k must"):
        fn(TOPK, TARGET, 2.0)
    with pytest.raises(ValueError, match="reduction"):
        fn(TOPK, TARGET, 2, reduction="sum")


def test_evaluate_topk_bad_input() -> None:
    with pytest.raises(ValueError, match="k must"):
        evaluate_topk(TOPK, TARGET, ks=(10,))
    with pytest.raises(ValueError, match="ks"):
        evaluate_topk(TOPK, TARGET, ks=())
    with pytest.raises(ValueError, match="metrics"):
        evaluate_topk(TOPK, TARGET, ks=(1,), metrics=("AUC",))
    with pytest.raises(ValueError, match="metrics"):
        evaluate_topk(TOPK, TARGET, ks=(1,), metrics="HR")


def test_auc_bad_input() -> None:
    s, y, u = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match="labels"):
        auc(s, torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="labels"):
        auc(s, y[:2])
    with pytest.raises(ValueError, match="labels"):
        auc(s, [0, 1, 1])
    with pytest.raises(ValueError, match="scores"):
        auc(torch.tensor([0.1, math.nan, 0.3]), y)
    with pytest.raises(ValueError, match="scores"):
        auc(s[None], y[None])
    with pytest.raises(ValueError, match="scores"):
        auc([0.1, 0.2, 0.3], y)
    with pytest.raises(ValueError, match="user_ids"):
        uauc(s, y, u[:2])
    with pytest.raises(ValueError, match="user_ids"):
        uauc(s, y, torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match="user_ids"):
        uauc(s, y, u.float())
    with pytest.raises(ValueError, match="labels"):
        uauc(s, torch.tensor([0.5, 1.0, 0.0]), u)
