"""fastrec.data: synthetic determinism, loaders, k-core, leave-one-out, graph, negative sampling."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrec.data import (
    TEXT_FIELDS,
    InteractionGraph,
    from_pairs,
    from_sequences,
    k_core,
    leave_one_out,
    load_csv,
    load_lcrec,
    load_movielens,
    remap_ids,
    sample_negatives,
    seen_csr,
    synthetic,
)

SMALL = {"num_users": 80, "num_items": 60}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic(tmp_path: Path) -> None:
    a = synthetic(tmp_path / "a", seed=3, **SMALL)
    b = synthetic(tmp_path / "b", seed=3, **SMALL)
    c = synthetic(tmp_path / "c", seed=4, **SMALL)
    assert a == tmp_path / "a"
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert set(fa) == {"Synthetic.inter.json", "Synthetic.item.json"}
    assert fa == fb
    assert fa["Synthetic.inter.json"] != fc["Synthetic.inter.json"]
    assert fa["Synthetic.item.json"] != fc["Synthetic.item.json"]


def test_synthetic_default_shape_and_text(tmp_path: Path) -> None:
    data = synthetic()
    assert data.num_users == 600 and data.num_items == 400
    lengths = data.lengths()
    assert int(lengths.min()) >= 5
    assert 8 <= float(lengths.float().mean()) <= 12
    for u in range(0, 600, 97):  # items within a user are distinct
        seq = data.sequence(u)
        assert len(seq) == len(set(seq))
    counts = torch.bincount(data.items, minlength=400).sort(descending=True).values
    assert counts[:40].sum() > 3 * counts[-200:].sum()  # power-law popularity
    text = data.item_text[0]
    assert set(text) == set(TEXT_FIELDS) and all(text[f] for f in TEXT_FIELDS)
    assert text["brand"] in text["title"] and text["categories"].count(",") == 3
    folder = synthetic(tmp_path, name="Toy")
    back = load_lcrec(folder)
    assert back.name == "Toy" and torch.equal(back.items, data.items) and torch.equal(back.indptr, data.indptr)
    assert back.item_text == data.item_text


def test_synthetic_text_correlates_with_interactions() -> None:
    """Consecutive items of a user share a top-level category far more often than random pairs."""
    data = synthetic(**SMALL, seed=1)
    top = [data.item_text[i]["categories"].split(",")[1] for i in range(data.num_items)]
    seqs = data.sequences()
    same = np.mean([top[a] == top[b] for s in seqs for a, b in zip(s, s[1:], strict=False)])
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, data.num_items, (2000, 2))
    base = np.mean([top[a] == top[b] for a, b in pairs])
    assert same > base + 0.1


def test_synthetic_bad_args() -> None:
    with pytest.raises(ValueError, match="num_users"):
        synthetic(num_users=0)
    with pytest.raises(ValueError, match="num_items"):
        synthetic(num_items=3)


# ----------------------------------------------------------------------------- loaders


def test_lcrec_round_trip(tmp_path: Path) -> None:
    inter = {"10": [5, 7, 9], "2": [7, 5], "3": []}
    items = {str(i): {"title": f"t{i}", "description": "d", "brand": "b", "categories": "c"} for i in (5, 7, 9, 11)}
    index = {str(i): [f"<a_{i}>", f"<b_{i}>"] for i in (5, 7, 9, 11)}
    for suffix, obj in (("inter", inter), ("item", items), ("index", index)):
        (tmp_path / f"X.{suffix}.json").write_text(json.dumps(obj))
    data = load_lcrec(tmp_path)
    assert data.name == "X" and data.num_users == 3 and data.num_items == 4
    assert data.user_ids == ["2", "3", "10"] and data.item_ids == ["5", "7", "9", "11"]
    assert data.sequences() == [[1, 0], [], [0, 1, 2]]
    assert data.item_text[3]["title"] == "t11" and data.item_index[2] == ["<a_9>", "<b_9>"]
    assert data.user_map["10"] == 2 and data.item_map["9"] == 2
    # an explicit index file elsewhere; missing item file -> empty text
    (tmp_path / "X.item.json").unlink()
    other = tmp_path / "idx.json"
    other.write_text(json.dumps({"5": ["<a_0>"]}))
    data = load_lcrec(tmp_path, name="X", index_file=other)
    assert data.item_text == {} and data.item_index == {0: ["<a_0>"]}


def test_lcrec_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="folder"):
        load_lcrec(tmp_path / "nope")
    with pytest.raises(ValueError, match="name"):
        load_lcrec(tmp_path)  # no inter file
    (tmp_path / "A.inter.json").write_text("{}")
    (tmp_path / "B.inter.json").write_text("{}")
    with pytest.raises(ValueError, match="name"):
        load_lcrec(tmp_path)
    with pytest.raises(ValueError, match="index_file"):
        load_lcrec(tmp_path, name="A", index_file=tmp_path / "missing.json")
    (tmp_path / "A.index.json").write_text(json.dumps({"1": "<a_1>"}))
    with pytest.raises(ValueError, match="token"):
        load_lcrec(tmp_path, name="A")
    (tmp_path / "A.index.json").unlink()


@pytest.mark.parametrize("inter, message", [
    ({"7": [1, -3]}, "A.inter.json: user '7' has item id -3, not a non-negative integer"),
    ({"7": [1, "-3"]}, "user '7' has item id '-3'"),
    ({"7": [1, 2.5]}, "user '7' has item id 2.5"),
    ({"7": [1, True]}, "user '7' has item id True"),
    ({"7": [1, "x1"]}, "user '7' has item id 'x1'"),
    ({"7": [1, None]}, "user '7' has item id None"),
    ({"-1": [1, 2]}, "A.inter.json: user '-1' is not a non-negative integer"),
    ({"7": 5}, "user '7' must map to a list"),
])
def test_lcrec_rejects_bad_ids_naming_file_and_user(tmp_path: Path, inter: dict, message: str) -> None:
    (tmp_path / "A.inter.json").write_text(json.dumps(inter))
    with pytest.raises(ValueError, match=re.escape(message)):
        load_lcrec(tmp_path)


def test_lcrec_truncated_or_bad_files_are_named(tmp_path: Path) -> None:
    inter = tmp_path / "A.inter.json"
    inter.write_text(json.dumps({"0": [1, 2, 3], "1": [2, 3]})[:-7])
    with pytest.raises(ValueError, match=re.escape(f"{inter}: not valid JSON, truncated")):
        load_lcrec(tmp_path)
    inter.write_text(json.dumps({"0": [1, 2, 3]}))
    item = tmp_path / "A.item.json"
    item.write_text('{"1": {"title": "a"}, "2": {"ti')
    with pytest.raises(ValueError, match=re.escape(f"{item}: not valid JSON")):
        load_lcrec(tmp_path)
    item.write_text(json.dumps({"1": {}, "-2": {}}))
    with pytest.raises(ValueError, match=re.escape(f"{item}: item id '-2' is not a non-negative integer")):
        load_lcrec(tmp_path)
    item.unlink()
    index = tmp_path / "A.index.json"
    index.write_text(json.dumps({"1": ["<a_1>"], "1.5": ["<a_2>"]}))
    with pytest.raises(ValueError, match=re.escape(f"{index}: item id '1.5'")):
        load_lcrec(tmp_path)
    inter.write_bytes(b'{"0": [1, 2, \xff]}')
    index.unlink()
    with pytest.raises(ValueError, match=re.escape(str(inter))):
        load_lcrec(tmp_path)


def test_movielens(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text(
        "1::20::5::300\n1::10::3::100\n2::10::4::50\n1::30::1::200\n", encoding="latin-1"
    )
    (tmp_path / "movies.dat").write_text(
        "10::Amélie (2001)::Comedy|Romance\n20::Heat (1995)::Action\n99::Unrated (1990)::Drama\n",
        encoding="latin-1",
    )
    data = load_movielens(tmp_path)
    assert data.num_users == 2 and data.item_ids == ["10", "20", "30"]
    assert data.sequences() == [[0, 2, 1], [0]]  # by timestamp
    assert data.timestamps.tolist() == [100, 200, 300, 50] and data.ratings.tolist() == [3, 1, 5, 4]
    assert data.item_text[0]["title"] == "Amélie (2001)" and data.item_text[0]["categories"] == "Comedy,Romance"
    assert 2 not in data.item_text
    implicit = load_movielens(tmp_path, min_rating=4)
    assert implicit.num_interactions == 2
    (tmp_path / "ratings.dat").write_text("1::2::3\n")
    with pytest.raises(ValueError, match="ratings.dat"):
        load_movielens(tmp_path)


@pytest.mark.parametrize("header", [True, False])
def test_csv(tmp_path: Path, header: bool) -> None:
    body = "u1,b,4,30\nu1,a,5,10\nu0,a,1,20\n"
    path = tmp_path / "log.csv"
    path.write_text(("user,item,rating,timestamp\n" if header else "") + body)
    data = load_csv(path)
    assert data.name == "log" and data.user_ids == ["u0", "u1"] and data.item_ids == ["a", "b"]
    assert data.sequences() == [[0], [0, 1]]
    assert data.ratings.tolist() == [1, 5, 4]
    two = tmp_path / "two.tsv"
    two.write_text(("user\titem\n" if header else "") + "3\t1\n3\t2\n1\t2\n")
    data = load_csv(two, delimiter="\t")
    assert data.user_ids == ["1", "3"] and data.sequences() == [[1], [0, 1]] and data.ratings is None


def test_csv_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="path"):
        load_csv(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\n1,2,3\n")
    with pytest.raises(ValueError, match="columns"):
        load_csv(bad)
    bad.write_text("1,2,3,x\n")
    with pytest.raises(ValueError, match="non-numeric"):
        load_csv(bad, header=False)


def test_remap_ids() -> None:
    codes, vocab = remap_ids(["3", "1", "3", "10"])
    assert vocab == ["1", "3", "10"] and codes.tolist() == [1, 0, 1, 2]
    codes, vocab = remap_ids(["b", "a"], vocab=["c"])
    assert vocab == ["a", "b", "c"] and codes.tolist() == [1, 0]
    codes, vocab = remap_ids(torch.tensor([3, 1, 3]), vocab=np.array([7]))
    assert vocab == ["1", "3", "7"] and codes.tolist() == [1, 0, 1]
    codes, vocab = remap_ids([str(i) for i in range(12)])
    assert codes.tolist() == list(range(12))  # contiguous ids keep their value


# ----------------------------------------------------------------------------- k-core


def _random_data(seed: int, num_users: int = 60, num_items: int = 40, nnz: int = 500):  # noqa: ANN202
    rng = np.random.default_rng(seed)
    users = rng.zipf(1.6, nnz) % num_users
    items = rng.zipf(1.4, nnz) % num_items
    return from_pairs(users.tolist(), items.tolist(), timestamps=list(range(nnz)))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6))
def test_k_core_property(seed: int, k: int) -> None:
    data = _random_data(seed)
    core = k_core(data, k)
    users, items = core.pairs()
    if core.num_interactions:
        assert int(torch.bincount(users).min()) >= k
        assert int(torch.bincount(items, minlength=core.num_items).min()) >= k
    # the k-core is the maximal one: k_core is idempotent and contains every pair of any k-core
    again = k_core(core, k)
    assert torch.equal(again.items, core.items) and again.user_ids == core.user_ids
    # order within users preserved: timestamps stay increasing
    for u in range(core.num_users):
        ts = core.timestamps[core.indptr[u] : core.indptr[u + 1]]
        assert bool((ts[1:] > ts[:-1]).all())
    kept = {(core.user_ids[u], core.item_ids[i]) for u, i in zip(users.tolist(), items.tolist(), strict=True)}
    du, di = data.pairs()
    orig = {(data.user_ids[u], data.item_ids[i]) for u, i in zip(du.tolist(), di.tolist(), strict=True)}
    assert kept <= orig


def test_k_core_keeps_text_and_separate_k() -> None:
    data = from_sequences({"0": [0, 1, 2], "1": [0, 1], "2": [0, 3]})
    data.item_text = {i: {"title": f"t{i}"} for i in range(4)}
    core = k_core(data, user_k=2, item_k=2)
    assert core.item_ids == ["0", "1"] and core.user_ids == ["0", "1"]
    assert core.item_text == {0: {"title": "t0"}, 1: {"title": "t1"}}
    with pytest.raises(ValueError, match="k"):
        k_core(data, -1)


# ----------------------------------------------------------------------------- leave-one-out


def test_leave_one_out() -> None:
    data = from_sequences({"0": [5, 6, 7, 8], "1": [1, 2], "2": [3, 4, 5]})
    split = leave_one_out(data)
    m = data.item_map
    assert split.train.sequences() == [[m["5"], m["6"]], [m["1"], m["2"]], [m["3"]]]
    assert split.valid_users.tolist() == [0, 2] and split.test_users.tolist() == [0, 2]
    assert split.valid_targets.tolist() == [m["7"], m["4"]]
    assert split.test_targets.tolist() == [m["8"], m["5"]]
    indptr, items = split.history("test")
    assert indptr.tolist() == [0, 3, 5] and items.tolist() == [m["5"], m["6"], m["7"], m["3"], m["4"]]
    indptr, items = split.history("valid")
    assert indptr.tolist() == [0, 2, 3] and items.tolist() == [m["5"], m["6"], m["3"]]
    indptr, items = split.seen("test")
    assert indptr.tolist() == [0, 3, 5, 7]
    assert items[:3].tolist() == sorted([m["5"], m["6"], m["7"]])
    indptr, _ = split.seen("valid")
    assert indptr.tolist() == [0, 2, 4, 5]
    with pytest.raises(ValueError, match="stage"):
        split.history("train")


def test_leave_one_out_synthetic_partition() -> None:
    data = synthetic(**SMALL)
    split = leave_one_out(data)
    assert split.train.num_interactions + 2 * split.test_users.numel() == data.num_interactions
    for u in (0, 17, 79):
        seq = data.sequence(u)
        assert split.train.sequence(u) == seq[:-2]
        j = int(torch.nonzero(split.test_users == u))
        assert split.valid_targets[j] == seq[-2] and split.test_targets[j] == seq[-1]


# ----------------------------------------------------------------------------- graph


def _dense_reference(users: list[int], items: list[int], nu: int, ni: int) -> np.ndarray:
    n = nu + ni
    a = np.zeros((n, n))
    for u, i in zip(users, items, strict=True):
        a[u, nu + i] = a[nu + i, u] = 1.0
    deg = a.sum(1)
    inv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1)), 0.0)
    return inv[:, None] * a * inv[None, :]


@pytest.mark.parametrize("seed", [0, 1])
def test_graph_matches_dense(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nu, ni = 13, 9  # some isolated nodes, duplicate edges
    users = rng.integers(0, nu - 2, 40).tolist()
    items = rng.integers(0, ni - 1, 40).tolist()
    g = InteractionGraph(torch.tensor(users), torch.tensor(items), nu, ni)
    ref = _dense_reference(users, items, nu, ni)
    dense = g.to_dense().numpy()
    assert g.num_nodes == nu + ni and g.num_users == nu and g.num_items == ni
    assert g.indptr.dtype == g.indices.dtype == torch.int64 and g.values.dtype == torch.float32
    np.testing.assert_allclose(dense, ref, rtol=1e-6, atol=1e-7)
    assert g.is_symmetric and np.array_equal(dense, dense.T)
    assert np.all(np.isfinite(dense)) and np.all(dense[nu - 1] == 0)  # isolated user
    # sqrt(deg) is an eigenvector with eigenvalue 1 of D^-1/2 A D^-1/2; rows are sorted
    deg = g.degree().double().numpy()
    np.testing.assert_allclose(ref @ np.sqrt(deg), np.sqrt(deg), rtol=1e-9)
    for r in range(g.num_nodes):
        row = g.indices[g.indptr[r] : g.indptr[r + 1]]
        assert bool((row[1:] > row[:-1]).all())
    sp = g.to_sparse_csr()
    assert sp.layout == torch.sparse_csr and sp is g.to_sparse_csr()  # cached
    x = torch.randn(nu + ni, 3, dtype=torch.float32)
    torch.testing.assert_close(sp @ x, torch.from_numpy(ref).float() @ x, rtol=1e-5, atol=1e-6)


def test_graph_seen_and_from_split() -> None:
    data = synthetic(**SMALL)
    split = leave_one_out(data)
    g = InteractionGraph.from_split(split)
    assert g.nnz == 2 * len({(u, i) for u, s in enumerate(split.train.sequences()) for i in s})
    for u in (0, 5, 42):
        row = g.seen_indices[g.seen_indptr[u] : g.seen_indptr[u + 1]].tolist()
        assert row == sorted(set(split.train.sequence(u)))
    empty = InteractionGraph(torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64), 3, 2)
    assert empty.nnz == 0 and empty.indptr.tolist() == [0] * 6 and empty.to_dense().abs().sum() == 0


def test_graph_bad_input() -> None:
    with pytest.raises(ValueError, match="users"):
        InteractionGraph(torch.tensor([0, 5]), torch.tensor([0, 1]), 3, 2)
    with pytest.raises(ValueError, match="items"):
        InteractionGraph(torch.tensor([0, 1]), torch.tensor([0, -1]), 3, 2)
    with pytest.raises(ValueError, match="users"):
        InteractionGraph(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), 3, 2)
    with pytest.raises(ValueError, match="users and items"):
        InteractionGraph(torch.tensor([0, 1]), torch.tensor([0]), 3, 2)
    with pytest.raises(ValueError, match="num_users"):
        InteractionGraph(torch.tensor([0]), torch.tensor([0]), -1, 2)


# ----------------------------------------------------------------------------- negative sampling


def test_negatives_never_seen() -> None:
    data = synthetic(**SMALL)
    g = InteractionGraph.from_interactions(data)
    users = torch.arange(data.num_users).repeat(3)
    gen = torch.Generator().manual_seed(0)
    neg = sample_negatives(users, g.seen_indptr, g.seen_indices, g.num_items, 7, gen)
    assert neg.shape == (users.numel(), 7) and neg.dtype == torch.int64
    assert int(neg.min()) >= 0 and int(neg.max()) < g.num_items
    seen = [set(data.sequence(u)) for u in range(data.num_users)]
    for u, row in zip(users.tolist(), neg.tolist(), strict=True):
        assert not seen[u] & set(row)
    again = sample_negatives(users, g.seen_indptr, g.seen_indices, g.num_items, 7, torch.Generator().manual_seed(0))
    assert torch.equal(neg, again)


def test_negatives_dense_users_and_uniformity() -> None:
    """Users who saw all but a few items hit the exact fallback; draws stay uniform over the complement."""
    num_items = 50
    seen = {0: list(range(49)), 1: list(range(1, 50, 2)), 2: [7, 7, 3]}  # user 0: only item 49 left
    indptr, indices = seen_csr(
        torch.tensor([u for u, s in seen.items() for _ in s]),
        torch.tensor([i for s in seen.values() for i in s]),
        3,
        num_items,
    )
    gen = torch.Generator().manual_seed(1)
    neg = sample_negatives(torch.tensor([0, 1, 2]), indptr, indices, num_items, 4000, gen, max_retries=0)
    assert bool((neg[0] == 49).all())
    assert bool((neg[1] % 2 == 0).all())
    counts = torch.bincount(neg[1], minlength=num_items)[0::2].double()
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()
    assert not ({3, 7} & set(neg[2].tolist()))
    # unsorted rows with duplicates are accepted
    neg = sample_negatives(torch.tensor([0]), torch.tensor([0, 3]), torch.tensor([9, 2, 9]), 10, 100, gen)
    assert not ({2, 9} & set(neg.flatten().tolist()))


def test_negatives_bad_input() -> None:
    indptr, indices = torch.tensor([0, 2, 2]), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="user 0 has seen all"):
        sample_negatives(torch.tensor([1, 0]), indptr, indices, 2, 1)
    free = sample_negatives(torch.tensor([1]), indptr, indices, 2, 30)  # user 1 has seen nothing
    assert set(free.flatten().tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="user_ids"):
        sample_negatives(torch.tensor([2]), indptr, indices, 2, 1)
    with pytest.raises(ValueError, match="user_ids"):
        sample_negatives(torch.tensor([0.0]), indptr, indices, 2, 1)
    with pytest.raises(ValueError, match="num_neg"):
        sample_negatives(torch.tensor([1]), indptr, indices, 2, -1)
    with pytest.raises(ValueError, match="num_items"):
        sample_negatives(torch.tensor([1]), indptr, indices, 0, 1)
    with pytest.raises(ValueError, match="seen_indices"):
        sample_negatives(torch.tensor([1]), indptr, torch.tensor([0, 5]), 2, 1)
    with pytest.raises(ValueError, match="seen_indptr"):
        sample_negatives(torch.tensor([1]), torch.tensor([0, 3, 2]), indices, 2, 1)
    assert sample_negatives(torch.empty(0, dtype=torch.int64), indptr, indices, 2, 5).shape == (0, 5)
    assert sample_negatives(torch.tensor([1]), indptr, indices, 3, 0).shape == (1, 0)
