"""semantic_fusion_lookup against the eager composition: values, gradients, strategies, dtypes, Triton,
opcheck, torch.compile, bad input; SemanticFusionEmbedding and SASRec."""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastrec import reference
from fastrec.ops import semantic_fusion_lookup, semantic_fusion_weight_grad

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
MODES = ("add", "gate", "concat")

# CPU tensors through the Triton kernels: only under the interpreter (set without a GPU); on a GPU the
# cuda-marked tests run the same kernels in their GPU block sizes.
INTERPRETER_ONLY = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                      reason="needs TRITON_INTERPRET=1 (no GPU)")



def make(num_items=37, D=50, d=8, dtype=torch.float32, sem_dtype=None, seed=0):
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    t = dict(
        id_table=torch.randn(num_items, d, generator=g).to(dtype).requires_grad_(),
        semantic_table=torch.randn(num_items, D, generator=g).to(sem_dtype or dtype),
        weight=(torch.randn(d, D, generator=g) / D**0.5).to(dtype).requires_grad_(),
        bias=torch.randn(d, generator=g).to(dtype).requires_grad_(),
        fuse_weight=(torch.randn(d, 2 * d, generator=g) / d**0.5).to(dtype).requires_grad_(),
        fuse_bias=torch.randn(d, generator=g).to(dtype).requires_grad_(),
    )
    return t


def args_for(t, mode):
    kw = dict(t)
    if mode == "add":
        kw["fuse_weight"] = kw["fuse_bias"] = None
    return kw


def eager(ids, kw, mode, padding_idx):
    pad = -1 if padding_idx is None else padding_idx
    return reference.semantic_fusion(ids, kw["id_table"], kw["semantic_table"], kw["weight"], kw["bias"],
                                     kw["fuse_weight"], kw["fuse_bias"], mode, pad)


def check_against_reference(ids, t, mode, padding_idx, strategy="auto", tol=2e-5):
    kw = args_for(t, mode)
    out = semantic_fusion_lookup(ids, mode=mode, padding_idx=padding_idx, strategy=strategy, **kw)
    ref = eager(ids, kw, mode, padding_idx)
    assert out.shape == (*ids.shape, kw["id_table"].shape[1]) and out.dtype == kw["id_table"].dtype
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)
    params = [p for p in kw.values() if p is not None and p.requires_grad]
    grad = torch.randn(out.shape, generator=torch.Generator(torch.get_default_device()).manual_seed(1)).to(out.dtype)
    got = torch.autograd.grad((out.float() * grad.float()).sum(), params, allow_unused=True)
    want = torch.autograd.grad((ref.float() * grad.float()).sum(), params, allow_unused=True)
    for g_got, g_want in zip(got, want, strict=True):
        torch.testing.assert_close(g_got.float(), g_want.float(), rtol=tol * 5, atol=tol * 5)
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("strategy", ["auto", "unique", "table"])
@pytest.mark.parametrize("shape", [(5, 7), (1, 1), (3, 50)])
def test_matches_eager_composition(mode, strategy, shape, on_device):
    t = make()
    ids = torch.randint(0, 37, shape)
    ids[0, 0] = 0  # padding
    out = check_against_reference(ids, t, mode, 0, strategy)
    assert torch.all(out[ids == 0] == 0), "padding rows must be zero"


@pytest.mark.parametrize("mode", MODES)
def test_odd_sizes_and_no_padding(mode, on_device):
    t = make(num_items=1001, D=131, d=13)  # d not a multiple of the tile width, D odd
    ids = torch.randint(0, 1001, (9, 11))
    check_against_reference(ids, t, mode, None, "unique")
    check_against_reference(ids, t, mode, None, "table")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_half_dtypes(dtype, mode, on_device):
    t = make(num_items=64, D=40, d=16, dtype=dtype)
    ids = torch.randint(0, 64, (6, 9))
    check_against_reference(ids, t, mode, 0, tol=TOL[dtype])


def test_semantic_table_in_another_dtype_and_int32_ids(on_device):
    t = make(num_items=64, D=40, d=16, sem_dtype=torch.bfloat16)
    ids = torch.randint(0, 64, (4, 5), dtype=torch.int32)
    check_against_reference(ids, t, "gate", 0)


def test_large_catalogue_sort_path_and_duplicates(on_device):
    # catalogue >> lookups takes the sort-based dedup; many repeats of a few ids exercise the grad sums
    t = make(num_items=100_000, D=24, d=16)
    ids = torch.tensor([[5, 99_999, 5, 0, 5], [77, 77, 99_999, 1, 0]])
    check_against_reference(ids, t, "gate", 0)
    check_against_reference(ids, t, "add", None)


def test_strategies_choose_by_coverage():
    t = make(num_items=40)
    kw = args_for(t, "add")
    few = torch.tensor([[1, 2, 2, 3]])
    _, rows, inverse, reduced = torch.ops.fastrec.semantic_fusion_lookup(
        few, kw["id_table"], kw["semantic_table"], kw["weight"], kw["bias"], None, None, "add", 0, 0)
    assert rows.tolist() == [1, 2, 3] and reduced.shape == (3, 8)
    assert inverse.tolist() == [[0, 1, 1, 2]]
    everything = torch.arange(40).repeat(3)[None]  # the whole catalogue is touched: table
    _, rows, inverse, _ = torch.ops.fastrec.semantic_fusion_lookup(
        everything, kw["id_table"], kw["semantic_table"], kw["weight"], kw["bias"], None, None, "add", 0, 0)
    assert rows.tolist() == list(range(40))
    assert inverse[0, :3].tolist() == [-1, 1, 2]  # padding id 0 maps to -1


def test_padding_gets_no_gradient_and_frozen_semantic_table(on_device):
    t = make()
    ids = torch.tensor([[0, 0, 3], [0, 4, 4]])
    out = semantic_fusion_lookup(ids, t["id_table"], t["semantic_table"], t["weight"], t["bias"], "gate",
                                 t["fuse_weight"], t["fuse_bias"], padding_idx=0)
    out.sum().backward()
    assert torch.all(t["id_table"].grad[0] == 0)
    assert torch.all(t["id_table"].grad[[1, 2, 5]] == 0) and torch.any(t["id_table"].grad[3] != 0)
    assert t["semantic_table"].grad is None


def test_weight_grad_op_matches_reference(on_device):
    sem = torch.randn(300, 70)
    rows = torch.tensor([3, 7, 250, 299])
    g = torch.randn(4, 9)
    torch.testing.assert_close(semantic_fusion_weight_grad(rows, g, sem),
                               reference.semantic_fusion_weight_grad(rows, g, sem))
    torch.testing.assert_close(semantic_fusion_weight_grad(torch.arange(300), torch.randn(300, 9), sem).shape,
                               torch.Size([9, 70]))
    assert torch.all(semantic_fusion_weight_grad(rows[:0], g[:0], sem) == 0)


def test_empty_ids_give_empty_output(on_device):
    t = make()
    for shape in [(0, 5), (3, 0)]:
        out = semantic_fusion_lookup(torch.zeros(shape, dtype=torch.int64), t["id_table"], t["semantic_table"],
                                     t["weight"], t["bias"], padding_idx=0)
        assert out.shape == (*shape, 8)
        out.sum().backward()
        # the reference too (the CUDA backend where Triton is missing, the CPU one without fastrec._C)
        ref = reference.semantic_fusion_lookup(torch.zeros(shape, dtype=torch.int64), t["id_table"].detach(),
                                               t["semantic_table"], t["weight"].detach(), None, None, None, "add",
                                               0, 1)[0]
        assert ref.shape == (*shape, 8)


def test_non_contiguous_tables(on_device):
    t = make(num_items=30, D=20, d=8)
    sem = torch.randn(20, 30).t()  # [30, 20] non-contiguous
    idt = torch.randn(8, 30).t().requires_grad_()
    ids = torch.randint(0, 30, (4, 6))
    out = semantic_fusion_lookup(ids, idt, sem, t["weight"], t["bias"], padding_idx=0)
    ref = reference.semantic_fusion(ids, idt, sem, t["weight"], t["bias"], None, None, "add", 0)
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-5)


def test_opcheck(on_device):
    t = make(num_items=20, D=12, d=4)
    ids = torch.randint(0, 20, (3, 4))
    args = (ids, t["id_table"], t["semantic_table"], t["weight"], t["bias"], t["fuse_weight"], t["fuse_bias"],
            "gate", 0, 1)
    # integer outputs (rows, inverse) cannot take part in aot_dispatch's sum; compile is tested below
    torch.library.opcheck(torch.ops.fastrec.semantic_fusion_lookup.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    rows = torch.tensor([1, 5, 7])
    torch.library.opcheck(torch.ops.fastrec.semantic_fusion_weight_grad.default,
                          (rows, torch.randn(3, 4), t["semantic_table"]))


def test_torch_compile_forward_backward(on_device):
    t = make(num_items=20, D=12, d=4)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss(ids, idt, sem, w, b, fw, fb):
        return semantic_fusion_lookup(ids, idt, sem, w, b, "gate", fw, fb, padding_idx=0).pow(2).sum()

    ids = torch.randint(0, 20, (3, 5))
    params = (t["id_table"], t["weight"], t["bias"], t["fuse_weight"], t["fuse_bias"])
    args = (ids, t["id_table"], t["semantic_table"], t["weight"], t["bias"], t["fuse_weight"], t["fuse_bias"])
    got = torch.autograd.grad(loss(*args), params)
    want = torch.autograd.grad(loss.__wrapped__(*args), params)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_triton_weight_grad_splits_the_rows(triton_device):
    """U = 2500 rows: three row splits (1024 rows at least each), summed in order; an empty last split and
    repeated rows included. Against the fp64 product."""
    pytest.importorskip("triton")
    from fastrec.kernels import fusion as tk

    g = torch.Generator().manual_seed(7)
    sem = torch.randn(300, 40, generator=g)
    rows = torch.randint(0, 300, (2500,), generator=g)
    grad = torch.randn(2500, 12, generator=g)
    assert tk._grad_splits(2500) == 3 and tk._grad_splits(1024) == 1
    got = tk.weight_grad(rows.to(triton_device), grad.to(triton_device), sem.to(triton_device))
    want = grad.double().t() @ sem.double()[rows]
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-4)


def test_bf16x3_planes_sum_to_the_fp32_value_exactly():
    """Three bf16 planes hold an fp32 value's 24 significant bits: the sum is exact from 2^-110 up (within 2^-134
    below, where the last plane's bits fall under bf16's subnormals); non-finite values give NaN planes."""
    from fastrec.kernels import bf16x3_planes

    g = torch.Generator().manual_seed(11)
    x = (torch.randn(200_000, generator=g).double() * 2.0 ** torch.randint(-149, 127, (200_000,), generator=g)).float()
    x = x[torch.isfinite(x)]
    planes = bf16x3_planes(x)
    assert planes.dtype == torch.bfloat16 and planes.shape == (3, *x.shape)
    err = (planes.double().sum(0) - x.double()).abs()
    normal = x.abs() >= 2.0 ** -110
    assert normal.sum() > 100_000 and (~normal).sum() > 10_000
    assert torch.equal(err[normal], torch.zeros_like(err[normal]))
    assert (err[~normal] <= 2.0 ** -134).all()
    assert (planes[2][normal] != 0).any()  # the third plane is not idle
    assert torch.isnan(bf16x3_planes(torch.tensor([float("inf"), float("nan")]))[2]).all()


def _one_product_per_output(device, n=50, D=40, U=30, d=12, seed=5):
    """A bf16 table whose row i < D has one non-zero, ±2^e in column perm[i] (rows from D on are zero), U distinct
    rows of it, and fp32 operands with all 24 bits used over a wide exponent range: every output element of the
    reduction (sem[rows] @ W^T) and of the weight gradient (G^T sem[rows]) is one product plus exact zeros, so an
    exact-product scheme must equal the float64 result rounded once, bit for bit (bf16x3 with a plane dropped is
    2^-17 off)."""
    g = torch.Generator().manual_seed(seed)
    sem = torch.zeros(n, D)
    sem[torch.arange(D), torch.randperm(D, generator=g)] = (torch.randint(0, 2, (D,), generator=g) * 2 - 1) * 2.0 ** (
        torch.randint(-8, 8, (D,), generator=g).float())
    rows = torch.randperm(n, generator=g)[:U]
    wide = lambda *shape: torch.randn(*shape, generator=g) * 2.0 ** torch.randint(-20, 20, shape, generator=g)  # noqa: E731
    return (sem.bfloat16().to(device), rows.to(device), wide(d, D).to(device), wide(U, d).to(device))


def test_bf16_table_against_fp32_takes_exact_products(triton_device, monkeypatch):
    """A bf16 table against an fp32 weight / gradient (KIRec's usual dtypes) runs bf16x3 (three bf16 planes of the
    fp32 operand, three native bf16 dots), whose products are exact: with one product per output element both
    kernels equal float64 bit for bit. FASTREC_FUSION_DOT chooses the scheme and a bad value is named."""
    from fastrec.kernels import fusion as tk

    monkeypatch.delenv("FASTREC_TF32", raising=False)
    assert tk.fusion_dot(torch.bfloat16, torch.float32)[1] == "bf16x3"
    assert tk.fusion_dot(torch.float16, torch.float32) == tk.dot_scheme(torch.float16, torch.float32)
    assert tk.fusion_dot(torch.bfloat16, torch.bfloat16) == tk.dot_scheme(torch.bfloat16, torch.bfloat16)
    sem, rows, w, grad = _one_product_per_output(triton_device)
    want = (sem.double()[rows] @ w.double().t()).float()
    want_g = (grad.double().t() @ sem.double()[rows]).float()
    assert torch.equal(tk.gather_reduce(sem, rows, w, None), want)
    assert torch.equal(tk.weight_grad(rows, grad, sem), want_g)
    monkeypatch.setenv("FASTREC_FUSION_DOT", "tf32x3")  # the earlier scheme: within its bound, not exact on a GPU
    assert tk.fusion_dot(torch.bfloat16, torch.float32) == tk.dot_scheme(torch.bfloat16, torch.float32)
    torch.testing.assert_close(tk.gather_reduce(sem, rows, w, None), want, rtol=2**-20, atol=0)
    monkeypatch.setenv("FASTREC_FUSION_DOT", "bf16")
    with pytest.raises(ValueError, match="FASTREC_FUSION_DOT"):
        tk.gather_reduce(sem, rows, w, None)
    with pytest.raises(ValueError, match="FASTREC_FUSION_DOT"):
        tk.weight_grad(rows, grad, sem)


@INTERPRETER_ONLY
@pytest.mark.parametrize("mode", MODES)
def test_triton_kernels_under_interpreter(mode):
    pytest.importorskip("triton")
    from fastrec.kernels import fusion as tk

    from fastrec.ops.fusion import _triton_lookup

    t = make(num_items=70, D=45, d=12)
    kw = {k: (v.detach() if v is not None else None) for k, v in args_for(t, mode).items()}
    ids = torch.randint(0, 70, (3, 13))
    ids[1, :4] = 0
    out, rows, inverse, reduced = _triton_lookup(ids, kw["id_table"], kw["semantic_table"], kw["weight"], kw["bias"],
                                                 kw["fuse_weight"], kw["fuse_bias"], mode, 0, 0)
    torch.testing.assert_close(out, eager(ids, kw, mode, 0), rtol=2e-5, atol=2e-5)
    g = torch.randn(rows.numel(), 12)
    torch.testing.assert_close(tk.weight_grad(rows, g, kw["semantic_table"]),
                               reference.semantic_fusion_weight_grad(rows, g, kw["semantic_table"]))
    half = tk.fuse_gather(inverse.view(-1), rows, kw["id_table"].bfloat16(), reduced, kw["fuse_weight"],
                          kw["fuse_bias"], mode)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float().view_as(out), out, rtol=2e-2, atol=2e-2)
    for shape in [(0, 5), (3, 0)]:  # no ids: the [0, d] output keeps its width (an H200 run failed here)
        empty = _triton_lookup(torch.zeros(shape, dtype=torch.int64), kw["id_table"], kw["semantic_table"],
                               kw["weight"], kw["bias"], kw["fuse_weight"], kw["fuse_bias"], mode, 0, 0)[0]
        assert empty.shape == (*shape, out.shape[-1])


@INTERPRETER_ONLY
@pytest.mark.parametrize("mode", ["add", "gate", "concat"])
@pytest.mark.parametrize("d", [12, 40, 64])
def test_fuse_gather_in_its_gpu_tiles_under_interpreter(mode, d, monkeypatch):
    """fuse_gather with the GPU's (32, 32, 16) tiles (the interpreter's own cover d in one tile): several output
    column blocks, a k loop over several BLOCK_K slices with a ragged last one, and a ragged lookup block."""
    pytest.importorskip("triton")
    from fastrec.kernels import fusion as tk

    from fastrec.ops.fusion import _triton_lookup

    t = make(num_items=70, D=45, d=d)
    kw = {k: (v.detach() if v is not None else None) for k, v in args_for(t, mode).items()}
    ids = torch.randint(0, 70, (5, 13))
    ids[1, :4] = 0
    want = _triton_lookup(ids, kw["id_table"], kw["semantic_table"], kw["weight"], kw["bias"], kw["fuse_weight"],
                          kw["fuse_bias"], mode, 0, 0)
    monkeypatch.setattr(tk, "fuse_blocks", lambda d: (32, 32, 16, 4, 1))
    out, _, inverse, reduced = _triton_lookup(ids, kw["id_table"], kw["semantic_table"], kw["weight"], kw["bias"],
                                              kw["fuse_weight"], kw["fuse_bias"], mode, 0, 0)
    torch.testing.assert_close(out, eager(ids, kw, mode, 0), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(out, want[0], rtol=1e-5, atol=1e-5)
    assert (out[ids == 0] == 0).all()


def _bad(**over):
    t = {k: (v.detach() if v is not None else None) for k, v in make(num_items=10, D=6, d=4).items()}
    kw = dict(item_ids=torch.tensor([[1, 2]]), id_table=t["id_table"], semantic_table=t["semantic_table"],
              weight=t["weight"], bias=t["bias"], mode="add", padding_idx=0)
    kw.update(over)
    return lambda: semantic_fusion_lookup(**kw)


BAD = [
    (_bad(item_ids=torch.tensor([[1, 10]])), IndexError, "item_ids out of range"),
    (_bad(item_ids=torch.tensor([[-1, 2]])), IndexError, "item_ids out of range"),
    (_bad(item_ids=torch.tensor([[1.0, 2.0]])), ValueError, "item_ids must have dtype"),
    (_bad(item_ids=[[1, 2]]), TypeError, "item_ids must be a torch.Tensor"),
    (_bad(semantic_table=torch.randn(10, 7)), ValueError, "weight has D=6 but semantic_table has D=7"),
    (_bad(semantic_table=torch.randn(9, 6)), ValueError, "semantic_table has 9 rows but id_table has 10"),
    (_bad(semantic_table=torch.randn(10, 6, 1)), ValueError, "semantic_table must be 2-D"),
    (_bad(weight=torch.randn(5, 6)), ValueError, "weight has d=5"),
    (_bad(bias=torch.randn(3)), ValueError, "bias has 3 entries"),
    (_bad(bias=torch.randn(4).double()), ValueError, "bias must have dtype"),
    (_bad(weight=torch.randn(4, 6).half()), ValueError, "differ in dtype"),
    (_bad(mode="mul"), ValueError, "mode must be one of"),
    (_bad(mode="gate"), ValueError, "fuse_weight .* is required"),
    (_bad(fuse_weight=torch.randn(4, 8)), ValueError, "must be None for mode 'add'"),
    (_bad(mode="concat", fuse_weight=torch.randn(4, 4)), ValueError, "fuse_weight must be \\[d, 2d\\]"),
    (_bad(mode="gate", fuse_weight=torch.full((4, 8), float("nan"))), ValueError, "fuse_weight contains NaN"),
    (_bad(weight=torch.full((4, 6), float("nan"))), ValueError, "weight contains NaN"),
    (_bad(padding_idx=10), ValueError, "padding_idx must be an int in"),
    (_bad(strategy="fast"), ValueError, "strategy must be one of"),
]


@pytest.mark.parametrize("call,exc,match", BAD)
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_nan_semantic_rows_raise_only_when_used():
    sem = torch.randn(10, 6)
    sem[7, 2] = float("nan")
    args = (torch.randn(10, 4), sem, torch.randn(4, 6))
    semantic_fusion_lookup(torch.tensor([[1, 2]]), *args)  # row 7 not looked up: fine
    with pytest.raises(ValueError, match="semantic_table contains NaN"):
        semantic_fusion_lookup(torch.tensor([[1, 7]]), *args)


def test_kernel_checks_range_itself():
    with pytest.raises(IndexError, match="out of range"):
        torch.ops.fastrec.semantic_fusion_lookup(torch.tensor([[3, 11]]), torch.randn(10, 4), torch.randn(10, 6),
                                                 torch.randn(4, 6), None, None, None, "add", -1, 0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    b=st.integers(0, 5), length=st.integers(0, 9), num_items=st.integers(1, 60), D=st.integers(1, 40),
    d=st.integers(1, 20), mode=st.sampled_from(MODES), strategy=st.sampled_from(["auto", "unique", "table"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]), pad=st.booleans(), seed=st.integers(0, 2**31 - 1),
)
def test_property_against_reference(b, length, num_items, D, d, mode, strategy, dtype, pad, seed, on_device):
    t = make(num_items, D, d, dtype=dtype, seed=seed)
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    ids = torch.randint(0, num_items, (b, length), generator=g)
    if ids.numel():
        ids.view(-1)[0] = num_items - 1  # boundary id
    check_against_reference(ids, t, mode, 0 if pad else None, strategy, tol=TOL[dtype])


# ------------------------------------------------------------------------------ no host sync (validate=False)


def test_device_unique_rows_equal_torch_unique():
    from fastrec.reference.fusion import device_unique_rows

    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        flat = torch.randint(0, 12, (40,), generator=g)
        valid = flat != 3
        rows, inverse = device_unique_rows(flat, valid, 12)
        want_rows, want_inv = torch.unique(flat[valid], sorted=True, return_inverse=True)
        u = want_rows.numel()
        assert rows.shape == (40,) and torch.equal(rows[:u], want_rows)
        assert (rows[u:] == want_rows.max()).all()  # spare slots repeat a looked-up row
        assert torch.equal(inverse[valid], want_inv) and (inverse[~valid] == -1).all()
    rows, inverse = device_unique_rows(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool), 5)
    assert rows.numel() == 0 and inverse.numel() == 0


def _reference_grads(strategy, ids, kw, mode):
    """Forward and backward of the op's reference with a given strategy code, through the op's own backward."""
    from types import SimpleNamespace

    from fastrec.ops.fusion import _backward

    args = (kw["id_table"], kw["semantic_table"], kw["weight"], kw["bias"], kw["fuse_weight"], kw["fuse_bias"])
    args = tuple(None if a is None else a.detach() for a in args)
    out, rows, inverse, reduced = reference.semantic_fusion_lookup(ids, *args, mode, 0, strategy)
    idt, sem, w, b, fw, fb = args
    ctx = SimpleNamespace(saved_tensors=(rows, inverse, reduced, idt, sem, fw, fb), mode=mode, num_items=idt.shape[0],
                          needs_input_grad=[False, True, False, True, True, fw is not None, fb is not None, 0, 0, 0],
                          dtypes=[None if t is None else t.dtype for t in (idt, w, b, fw, fb)])
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    return out, [g for g in _backward(ctx, grad, None, None, None) if g is not None]


@pytest.mark.parametrize("mode", MODES)
def test_device_unique_strategy_equals_the_unique_path(mode):
    t = make(num_items=30, D=20, d=6)
    ids = torch.randint(0, 30, (4, 9))
    ids[:, :3] = 0
    out1, grads1 = _reference_grads(1, ids, args_for(t, mode), mode)
    out3, grads3 = _reference_grads(3, ids, args_for(t, mode), mode)
    assert torch.equal(out1, out3)
    assert len(grads1) == len(grads3) >= 3
    for a, b in zip(grads1, grads3, strict=True):  # the spare slots add exact zeros
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@INTERPRETER_ONLY
@pytest.mark.parametrize("shape,pad", [((3, 11), 4), ((4, 60), 50)])
def test_triton_device_unique_path_equals_unique_path(shape, pad):
    """The sync-free layout: the unique ids, then spare slots reduced to zero (with (4, 60) and 50 of 60 padded,
    whole 64-row blocks of spare slots, which the kernel skips)."""
    from fastrec.ops.fusion import DEVICE_UNIQUE, _triton_lookup

    t = make(num_items=50, D=33, d=8)
    kw = {k: (v.detach() if v is not None else None) for k, v in args_for(t, "gate").items()}
    ids = torch.randint(0, 50, shape, generator=torch.Generator().manual_seed(1))
    ids[0, :pad] = 0
    ids[1:, :pad - 4] = 0
    args = (kw["id_table"], kw["semantic_table"], kw["weight"], kw["bias"], kw["fuse_weight"], kw["fuse_bias"],
            "gate", 0)
    out1, rows1, inv1, red1 = _triton_lookup(ids, *args, 1)
    out3, rows3, inv3, red3 = _triton_lookup(ids, *args, DEVICE_UNIQUE)
    assert torch.equal(out1, out3) and torch.equal(inv1, inv3)
    u = rows1.numel()
    assert rows3.numel() == ids.numel() and torch.equal(rows3[:u], rows1) and torch.equal(red3[:u], red1)
    assert u < ids.numel() and not red3[u:].any()  # the spare slots: reduced to zero, never computed
    assert shape[1] < 60 or ids.numel() - u >= 2 * 64


def test_no_sync_ops_catches_a_sync(no_sync_ops):
    with pytest.raises(AssertionError, match="syncs"), no_sync_ops():
        torch.unique(torch.tensor([1, 1, 2]))
    with pytest.raises(AssertionError, match="syncs"), no_sync_ops():
        torch.arange(4)[torch.tensor([True, False, True, False])]


@pytest.mark.parametrize("mode", MODES)
def test_device_unique_forward_and_backward_use_no_syncing_op(mode, no_sync_ops):
    t = make(num_items=30, D=20, d=6)
    ids = torch.randint(0, 30, (4, 9))
    with no_sync_ops():
        _reference_grads(3, ids, args_for(t, mode), mode)


@pytest.mark.parametrize("strategy", ["auto", "unique", "table"])
def test_torch_compile_fullgraph_forward_backward_validate_false(strategy, on_device):
    t = make(num_items=20, D=12, d=4)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss(ids, idt, sem, w, b, fw, fb):
        out = semantic_fusion_lookup(ids, idt, sem, w, b, "gate", fw, fb, padding_idx=0, strategy=strategy,
                                     validate=False)
        return out.pow(2).sum()

    ids = torch.randint(0, 20, (3, 5))
    params = (t["id_table"], t["weight"], t["bias"], t["fuse_weight"], t["fuse_bias"])
    args = (ids, t["id_table"], t["semantic_table"], t["weight"], t["bias"], t["fuse_weight"], t["fuse_bias"])
    got = torch.autograd.grad(loss(*args), params)
    ref = eager(ids, args_for(t, "gate"), "gate", 0).pow(2).sum()
    want = torch.autograd.grad(ref, params)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_autotune_configs_keep_the_accumulator_in_registers():
    """On a GPU the block sizes are autotuned per (d, D); the pruning keeps at most 32 fp32 accumulator values
    a thread (16 with fp32 tiles: operands upcast, as a bf16 table against an fp32 weight is), so d = 256 does not
    spill, and always leaves a config."""
    pytest.importorskip("triton")
    from fastrec.kernels import fusion as tk

    for d in (1, 8, 64, 256, 1024):
        for upcast, per_thread in ((False, 32), (True, 16)):
            kept = tk._prune_reduce(tk._CONFIGS, {"d": d}, UPCAST=upcast)
            assert kept
            if d <= 256:
                assert all(c.kwargs["BLOCK_U"] * tk._bdm(d) <= per_thread * 32 * c.num_warps for c in kept)
        assert tk._prune_grad(tk._CONFIGS, {"d": d})
    assert len(tk._prune_reduce(tk._CONFIGS, {"d": 64}, UPCAST=True)) > 3
    assert len(tk._prune_reduce(tk._CONFIGS, {"d": 256}, UPCAST=False)) > len(
        tk._prune_reduce(tk._CONFIGS, {"d": 256}, UPCAST=True))
