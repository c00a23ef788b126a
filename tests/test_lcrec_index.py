"""sinkhorn_assign against LC-Rec's reference; ResidualQuantizer / RQVAE losses, gradients and encode;
build_index with zero collisions; LC-Rec index JSON import/export and bad index files."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrec import reference
from fastrec.data.semantic_index import (
    check_index,
    codes_to_index,
    collision_groups,
    index_to_codes,
    load_index,
    save_index,
)
from fastrec.nn import RQVAE, ResidualQuantizer
from fastrec.ops import residual_encode, sinkhorn_assign
from fastrec.recipes.lcrec_index import build_index, collision_rate, train_rqvae


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (1000, 256), (300, 17)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sinkhorn_matches_reference(shape, dtype):
    d = torch.rand(shape).to(dtype)
    got = sinkhorn_assign(d, 0.003, 50)
    want = reference.sinkhorn_assign(d, 0.003, 50)
    assert got.dtype == torch.int64 and got.shape == (shape[0],)
    assert (got == want).float().mean() >= 0.995  # float64 rounding may flip a rare near-tie


def test_sinkhorn_balances_codes_where_argmin_does_not():
    d = torch.rand(1024, 32)
    d[:, 5] -= 0.5  # code 5 is nearest for most rows
    greedy = d.argmin(1).bincount(minlength=64)
    codes = sinkhorn_assign(d, 0.003, 50)
    balanced = codes.bincount(minlength=64)
    assert greedy.max() > 500 and balanced.max() < greedy.max() / 2
    assert (codes == reference.sinkhorn_assign(d, 0.003, 50)).float().mean() > 0.995
    assert sinkhorn_assign(d, 0.003, 200).bincount(minlength=64).max() < balanced.max()
    assert torch.equal(sinkhorn_assign(d, 0.003, 0), reference.sinkhorn_assign(d, 0.003, 0))


def test_sinkhorn_empty_and_bad_input():
    assert sinkhorn_assign(torch.rand(0, 5)).shape == (0,)
    for call, match in [
        (lambda: sinkhorn_assign(torch.rand(3)), "distances must be 2-D"),
        (lambda: sinkhorn_assign(torch.rand(3, 0)), "K = 0"),
        (lambda: sinkhorn_assign(torch.rand(3, 4), 0.0), "epsilon"),
        (lambda: sinkhorn_assign(torch.rand(3, 4), float("nan")), "epsilon"),
        (lambda: sinkhorn_assign(torch.rand(3, 4), 0.1, -1), "iters"),
        (lambda: sinkhorn_assign(torch.tensor([[0.0, float("nan")]])), "NaN"),
        (lambda: sinkhorn_assign(torch.ones(3, 4, dtype=torch.long)), "distances must have"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()
    with pytest.raises(ValueError, match="NaN"):
        torch.ops.fastrec.sinkhorn_assign(torch.tensor([[0.0, float("inf")]]), 0.1, 3)


def test_sinkhorn_opcheck_and_compile():
    d = torch.rand(33, 9)
    torch.library.opcheck(torch.ops.fastrec.sinkhorn_assign.default, (d, 0.05, 7))
    f = torch.compile(lambda d: sinkhorn_assign(d, 0.05, 7), fullgraph=True, backend="aot_eager")
    assert torch.equal(f(d), reference.sinkhorn_assign(d, 0.05, 7))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 60), k=st.integers(1, 40), iters=st.integers(0, 20), eps=st.sampled_from([0.003, 0.05, 1.0]),
       dup=st.booleans(), seed=st.integers(0, 1000))
def test_sinkhorn_property(n, k, iters, eps, dup, seed):
    d = torch.rand(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if dup and n > 1:
        d[1] = d[0]
    got, want = sinkhorn_assign(d, eps, iters), reference.sinkhorn_assign(d, eps, iters)
    assert bool(((got >= 0) & (got < k)).all())
    if (n == 1 or eps < 0.01 or (n > 0 and bool((d == d[0]).all()))) and iters > 0:
        # one row, all rows equal, or saturated columns (tiny epsilon, few rows): a column step gives several
        # codes of a row the same mass 1/K up to rounding, so which one wins is a rounding accident in any
        # implementation
        return
    assert (got == want).float().mean() >= 0.9 if n else got.numel() == 0
    if dup and n > 1:
        assert got[0] == got[1]


def test_residual_quantizer_forward_losses_and_gradients():
    rq = ResidualQuantizer(levels=3, codebook_size=8, dim=5, sinkhorn_epsilon=(0, 0, 0), kmeans_init=False)
    x = torch.randn(40, 5, requires_grad=True)
    xq, loss, codes = rq(x)
    ref_codes, ref_q = residual_encode(x.detach(), rq.codebooks.detach())
    assert torch.equal(codes, ref_codes)
    torch.testing.assert_close(xq, ref_q)
    # LC-Rec loss by hand: level l compares the chosen code with the residual left by levels < l
    r, want = x.detach(), 0.0
    for lv in range(3):
        c = rq.codebooks.detach()[lv][codes[:, lv]]
        want += (1 + 0.25) * (c - r).pow(2).mean() / 3
        r = r - c
    torch.testing.assert_close(loss, want)
    g = torch.randn_like(xq)
    gx, gc = torch.autograd.grad((xq * g).sum() + loss, (x, rq.codebooks))
    # straight-through: d(xq)/dx = I; commitment on level 0 only reaches x
    c0 = rq.codebooks.detach()[0][codes[:, 0]]
    torch.testing.assert_close(gx, g + 0.25 * 2 * (x.detach() - c0) / x.numel() / 3)
    assert gc.abs().sum() > 0


def test_kmeans_init_and_sinkhorn_level():
    torch.manual_seed(0)
    rq = ResidualQuantizer(levels=2, codebook_size=16, dim=4, sinkhorn_epsilon=(0, 0.003))
    x = torch.randn(600, 4)
    rq.train()
    _, _, codes = rq(x)
    assert bool(rq.initted)
    # k-means centres: the level-0 codebook is within the data, every code used
    assert codes[:, 0].unique().numel() == 16
    # Sinkhorn spreads the last level nearly uniformly
    assert codes[:, 1].bincount(minlength=16).max() <= 3 * 600 // 16
    greedy = rq.encode(x, use_sinkhorn=False)
    assert torch.equal(greedy[:, 0], codes[:, 0])


def test_rqvae_trains_and_build_index_has_zero_collisions():
    torch.manual_seed(0)
    x = torch.randn(600, 24)
    x[100:110] = x[3]  # ten identical items (identical texts): only the fallback can separate them
    model = RQVAE(24, hidden=(32,), code_dim=8, levels=3, codebook_size=16)
    hist = train_rqvae(model, x, epochs=6, batch_size=256, eval_every=3, progress=False)
    assert [h["epoch"] for h in hist] == [3, 6] and hist[-1]["loss"] < hist[0]["loss"] * 1.5
    codes, stats = build_index(model, x)
    assert codes.shape == (600, 3) and collision_rate(codes) == 0.0 and not collision_groups(codes)
    assert stats["initial_collision_rate"] > 0 and stats["fallback_items"] >= 9
    assert bool(((codes >= 0) & (codes < 16)).all())
    again, _ = build_index(model, x)
    assert torch.equal(codes, again)  # deterministic
    _, stats = build_index(model, x, fallback=False)
    assert stats["collision_rate"] > 0


def test_fallback_overflows_to_earlier_levels():
    torch.manual_seed(0)
    x = torch.randn(1, 6).repeat(20, 1)  # 20 identical items, only 4 last-level codes
    model = RQVAE(6, hidden=(8,), code_dim=4, levels=3, codebook_size=4)
    train_rqvae(model, torch.randn(64, 6), epochs=1, progress=False)
    codes, stats = build_index(model, x)
    assert collision_rate(codes) == 0 and stats["fallback_items"] == 19
    with pytest.raises(ValueError, match="more items than code tuples"):
        build_index(RQVAE(6, hidden=(8,), code_dim=4, levels=1, codebook_size=4), x)


def test_nan_and_bad_embeddings():
    model = RQVAE(6, hidden=(8,), code_dim=4, levels=2, codebook_size=4)
    x = torch.randn(10, 6)
    x[4, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        build_index(model, x)
    with pytest.raises(ValueError, match="NaN"):
        train_rqvae(model, x, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"x must be a tensor \[N, 6\]"):
        model(torch.randn(3, 5))
    with pytest.raises(ValueError, match="one value per level"):
        ResidualQuantizer(levels=2, sinkhorn_epsilon=(0.0,))


def test_index_json_roundtrip_exact(tmp_path):
    codes = torch.tensor([[128, 241, 146, 235], [1, 2, 3, 4]])
    index = codes_to_index(codes)
    assert index == {"0": ["<a_128>", "<b_241>", "<c_146>", "<d_235>"], "1": ["<a_1>", "<b_2>", "<c_3>", "<d_4>"]}
    path = tmp_path / "X.index.json"
    save_index(index, path)
    assert json.loads(path.read_text()) == index
    assert torch.equal(index_to_codes(load_index(path, levels=4, codebook_size=256)), codes)
    assert not list(tmp_path.glob(".*tmp"))


def test_load_index_made_elsewhere_with_duplicates(shared_data):
    path = shared_data / "amazon-scientific" / "indexes" / "rqvae_native" / "Scientific.index.json"
    index = load_index(path, levels=4, codebook_size=256)
    codes = index_to_codes(index)
    assert codes.shape == (4344, 4)
    assert len(collision_groups(codes)) == 333  # SOURCES.txt: 333 duplicate-SID groups
    zcr = index_to_codes(load_index(path.parent.parent / "rqvae_zcr" / "Scientific.index.json"))
    assert collision_rate(zcr) == 0.0


BAD_INDEX = [
    ({"0": ["<a_1>"], "2": ["<a_2>"]}, "holes"),
    ({"0": ["<a_1>", "<b_1>"], "1": ["<a_2>"]}, "different level counts"),
    ({"0": ["<a_1>", "<c_1>"]}, "not of the form <b_code>"),
    ({"0": ["<a_1>", "<b_300>"]}, "outside the codebook"),
    ({"0": ["a_1"]}, "not of the form"),
    ({"x": ["<a_1>"]}, "integer item ids"),
    ({}, "non-empty"),
    ({"0": "<a_1>"}, "lists of token strings"),
]


@pytest.mark.parametrize("index,match", BAD_INDEX)
def test_bad_index_files(index, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        check_index(index, codebook_size=256)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=match):
        load_index(path, codebook_size=256)
    with pytest.raises(ValueError, match="index has 2 levels, expected 4"):
        check_index({"0": ["<a_1>", "<b_1>"]}, levels=4)
