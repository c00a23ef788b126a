"""embedding_sparse_update (fused sparse Adam / Adagrad of embedding tables): the reference against torch's
optimizers, every backend against the reference (values, duplicates, padding, dtypes), Triton under the
interpreter, hypothesis, opcheck, torch.compile, bad input; SparseOptimEmbedding and the fused
semantic-fusion lookup against a Parameter table trained by the same rule; state in the checkpoint."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrec import reference
from fastrec.nn import SemanticFusionEmbedding, SparseOptimEmbedding
from fastrec.ops import embedding_sparse_update

HP = dict(lr=0.05, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0)


def state(num_items=23, d=6, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(num_items, d, generator=g).to(dtype).to(device)
    m = (torch.randn(num_items, d, generator=g) * 0.1).to(device)
    v = (torch.rand(num_items, d, generator=g) * 0.1).to(device)
    return w, m, v


def clone(*ts):
    return [t.clone() for t in ts]


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
def test_reference_equals_torch_optimizers_when_rows_are_touched(optimizer):
    # Adam: every row touched at every step -> torch.optim.Adam exactly (L2 decay included); Adagrad: any rows
    # (zero-gradient rows never move in torch's Adagrad either); duplicates summed
    torch.manual_seed(0)
    num_items, d = 9, 4
    w0 = torch.randn(num_items, d)
    param = torch.nn.Parameter(w0.clone())
    adam = optimizer == "adam"
    wd = 0.01 if adam else 0.0
    opt = (torch.optim.Adam([param], lr=0.05, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd, foreach=False) if adam
           else torch.optim.Adagrad([param], lr=0.1, eps=1e-10, foreach=False))
    w, m, v = w0.clone(), torch.zeros(num_items, d), torch.zeros(num_items, d)
    for step in range(1, 5):
        ids = (torch.cat([torch.randperm(num_items), torch.randint(0, num_items, (5,))]) if adam
               else torch.randint(0, num_items, (7,)))
        grad = torch.randn(ids.numel(), d)
        param.grad = torch.zeros(num_items, d).index_add_(0, ids, grad)
        opt.step()
        reference.embedding_sparse_update(w, m, v, ids, grad, optimizer, 0.05 if adam else 0.1, 0.9, 0.99,
                                          1e-8 if adam else 1e-10, wd, step, -1)
        torch.testing.assert_close(w, param.detach(), rtol=1e-5, atol=1e-6)


def test_reference_adam_on_touched_rows_only():
    w, m, v = state()
    w1, m1, v1 = clone(w, m, v)
    ids = torch.tensor([3, 5, 3, 0, 7])
    grad = torch.randn(5, 6)
    reference.embedding_sparse_update(w1, m1, v1, ids, grad, "adam", step=3, padding_idx=0, **HP)
    untouched = torch.ones(23, dtype=torch.bool)
    untouched[[3, 5, 7]] = False
    assert torch.equal(w1[untouched], w[untouched]) and torch.equal(m1[untouched], m[untouched])
    assert torch.equal(v1[untouched], v[untouched])  # padding row 0 included: skipped
    g3 = grad[0] + grad[2]  # duplicates summed
    m3 = m[3] * 0.9 + 0.1 * g3
    v3 = v[3] * 0.99 + 0.01 * g3 * g3
    want = w[3] - 0.05 / (1 - 0.9**3) * m3 / (v3.sqrt() / (1 - 0.99**3) ** 0.5 + 1e-8)
    torch.testing.assert_close(w1[3], want)


def check_op(device, optimizer, ids, grad, dtype=torch.float32, padding_idx=0, weight_decay=0.0, step=2):
    w, m, v = state(dtype=dtype, device=device)
    got = clone(w, m, v)
    want = clone(w, m, v)
    hp = dict(HP, weight_decay=weight_decay)
    embedding_sparse_update(*got, ids.to(device), grad.to(device), optimizer, step=step, padding_idx=padding_idx, **hp)
    reference.embedding_sparse_update(*want, ids.to(device), grad.to(device), optimizer, step=step,
                                      padding_idx=-1 if padding_idx is None else padding_idx, **hp)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    return got


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_matches_reference(device, optimizer, dtype):
    ids = torch.randint(0, 23, (4, 9))  # many duplicates, padding 0 among them
    grad = torch.randn(4, 9, 6)
    check_op(device, optimizer, ids, grad, dtype, weight_decay=0.01)
    check_op(device, optimizer, torch.arange(23), torch.randn(23, 6), dtype, padding_idx=None, step=1)  # sorted
    check_op(device, optimizer, torch.arange(22, -1, -1).int(), torch.randn(23, 6).bfloat16(), dtype, step=7)
    w = check_op(device, optimizer, torch.empty(0, dtype=torch.int64), torch.empty(0, 6), dtype)  # nothing moves
    assert torch.equal(w[0], state(dtype=dtype, device=device)[0])


def test_deterministic_duplicate_sums():
    ids = torch.zeros(5000, dtype=torch.int64) + 4
    grad = torch.randn(5000, 6) * 1e3
    first = check_op("cpu", "adam", ids, grad, padding_idx=None)
    again = check_op("cpu", "adam", ids, grad, padding_idx=None)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 40), num_items=st.integers(1, 30), d=st.integers(1, 20), adam=st.booleans(),
       pad=st.booleans(), step=st.integers(1, 50), seed=st.integers(0, 2**16))
def test_hypothesis_against_reference(n, num_items, d, adam, pad, step, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, num_items, (n,), generator=g)
    grad = torch.randn(n, d, generator=g)
    w, m, v = torch.randn(num_items, d, generator=g), torch.zeros(num_items, d), torch.rand(num_items, d, generator=g)
    got, want = clone(w, m, v), clone(w, m, v)
    opt = "adam" if adam else "adagrad"
    padding = 0 if pad else None
    embedding_sparse_update(*got, ids, grad, opt, step=step, padding_idx=padding, **HP)
    reference.embedding_sparse_update(*want, ids, grad, opt, step=step, padding_idx=-1 if padding is None else 0,
                                      **HP)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
def test_triton_kernel_under_interpreter(optimizer):
    pytest.importorskip("triton")
    from fastrec.kernels import embedding_optim as tk

    ids = torch.randint(0, 23, (3, 11))
    grad = torch.randn(3, 11, 6)
    for dtype in (torch.float32, torch.bfloat16):
        w, m, v = state(dtype=dtype)
        got, want = clone(w, m, v), clone(w, m, v)
        tk.sparse_update(*got, ids, grad, optimizer, step=4, padding_idx=0, **dict(HP, weight_decay=0.01))
        reference.embedding_sparse_update(*want, ids, grad, optimizer, step=4, padding_idx=0,
                                          **dict(HP, weight_decay=0.01))
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_opcheck_and_compile():
    w, m, v = state()
    args = (w, m, v, torch.tensor([1, 4, 1]), torch.randn(3, 6), "adam", 0.01, 0.9, 0.999, 1e-8, 0.0, 1, 0)
    torch.library.opcheck(torch.ops.fastrec.embedding_sparse_update.default, args,
                          test_utils=("test_schema", "test_faketensor"))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(w, m, v, ids, grad):
        torch.ops.fastrec.embedding_sparse_update(w, m, v, ids, grad, "adagrad", 0.1, 0.9, 0.999, 1e-10, 0.0, 1, -1)
        return w.sum()

    w1, m1, v1 = clone(w, m, v)
    ids, grad = torch.tensor([2, 2, 9]), torch.randn(3, 6)
    step(w1, m1, v1, ids, grad)
    w2, m2, v2 = clone(w, m, v)
    reference.embedding_sparse_update(w2, m2, v2, ids, grad, "adagrad", 0.1, 0.9, 0.999, 1e-10, 0.0, 1, -1)
    torch.testing.assert_close(w1, w2)
    torch.testing.assert_close(v1, v2)


def _bad(**over):
    w, m, v = state()
    kw = dict(weight=w, exp_avg=m, exp_avg_sq=v, ids=torch.tensor([1, 2]), grad=torch.randn(2, 6))
    kw.update(over)
    return lambda: embedding_sparse_update(**kw)


BAD = [
    (_bad(ids=torch.tensor([1, 23])), IndexError, "ids out of range"),
    (_bad(ids=torch.tensor([-1, 2])), IndexError, "ids out of range"),
    (_bad(ids=torch.tensor([1.0, 2.0])), ValueError, "ids must have dtype"),
    (_bad(weight=torch.randn(23, 6, dtype=torch.float64)), ValueError, "weight must have dtype"),
    (_bad(weight=torch.randn(6, 23).t()), ValueError, "weight must be contiguous"),
    (_bad(weight=torch.randn(23, 6, requires_grad=True)), ValueError, "must not require grad"),
    (_bad(weight=torch.randn(23)), ValueError, "weight must be 2-D"),
    (_bad(exp_avg=torch.zeros(22, 6)), ValueError, "exp_avg must be a contiguous"),
    (_bad(exp_avg=torch.zeros(23, 6).bfloat16()), ValueError, "exp_avg must have dtype"),
    (_bad(exp_avg_sq=torch.zeros(23, 5)), ValueError, "exp_avg_sq must be a contiguous"),
    (_bad(grad=torch.randn(3, 6)), ValueError, "grad must hold one row"),
    (_bad(grad=torch.randn(2, 5)), ValueError, "grad must hold one row"),
    (_bad(grad=[[0.0] * 6] * 2), TypeError, "grad must be a torch.Tensor"),
    (_bad(optimizer="sgd"), ValueError, "optimizer must be one of"),
    (_bad(lr=-1.0), ValueError, "lr must be"),
    (_bad(beta1=1.0), ValueError, "beta1 must be"),
    (_bad(beta2=float("nan")), ValueError, "beta2 must be"),
    (_bad(eps=0.0), ValueError, "eps must be"),
    (_bad(weight_decay=-0.1), ValueError, "weight_decay must be"),
    (_bad(step=0), ValueError, "step must be"),
    (_bad(padding_idx=23), ValueError, "padding_idx must be"),
]


@pytest.mark.parametrize("fn,exc,msg", BAD, ids=[b[2] for b in BAD])
def test_bad_input(fn, exc, msg):
    with pytest.raises(exc, match=msg):
        fn()


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
def test_sparse_optim_embedding_equals_parameter_table(device, optimizer):
    # the same rule applied by hand to a Parameter table's (dense) gradient on the touched rows
    emb = SparseOptimEmbedding(15, 4, optimizer, lr=0.05, padding_idx=0).to(device)
    w, m, v = emb.weight.clone(), emb.exp_avg.clone(), emb.exp_avg_sq.clone()
    for step in range(1, 4):
        ids = torch.randint(0, 15, (3, 5), device=device)
        target = torch.randn(3, 5, 4, device=device)
        out = emb(ids)
        ((out - target) ** 2).sum().backward()
        grad = 2 * (w[ids] - target) * (ids != 0)[..., None]
        reference.embedding_sparse_update(w, m, v, ids, grad, optimizer, 0.05, 0.9, 0.999, emb.eps, 0.0, step, 0)
        torch.testing.assert_close(emb.weight, w, rtol=1e-5, atol=1e-6)
    assert int(emb.step) == 3 and torch.all(emb.weight[0] == 0)
    # the state is in the checkpoint: a reloaded table continues identically
    copy = SparseOptimEmbedding(15, 4, optimizer, lr=0.05, padding_idx=0).to(device)
    copy.load_state_dict(emb.state_dict())
    ids = torch.randint(1, 15, (2, 3), device=device)
    emb(ids).sum().backward()
    copy(ids).sum().backward()
    torch.testing.assert_close(copy.weight, emb.weight)
    torch.testing.assert_close(copy.exp_avg_sq, emb.exp_avg_sq)
    with torch.no_grad():
        torch.testing.assert_close(emb.eval()(ids), emb.weight[ids])


@pytest.mark.parametrize("mode", ["add", "gate", "concat"])
def test_fused_semantic_fusion_update_equals_dense_gradient(mode):
    # sparse-optimizer SemanticFusionEmbedding: values and dense-parameter gradients equal the plain module's,
    # and the ID rows move exactly as the reference update of the plain module's ID-table gradient
    torch.manual_seed(0)
    sem = torch.randn(31, 20)
    plain = SemanticFusionEmbedding(sem, 8, mode=mode, padding_idx=0)
    fused = SemanticFusionEmbedding(sem, 8, mode=mode, padding_idx=0, sparse_optimizer="adam", sparse_lr=0.01)
    fused.load_state_dict({k: v for k, v in plain.state_dict().items() if not k.startswith("id_embedding")},
                          strict=False)
    with torch.no_grad():
        fused.id_embedding.weight.copy_(plain.id_embedding.weight)
    ids = torch.randint(0, 31, (4, 7))
    target = torch.randn(4, 7, 8)
    out_p, out_f = plain(ids), fused(ids)
    torch.testing.assert_close(out_f, out_p)
    ((out_p - target) ** 2).sum().backward()
    ((out_f - target) ** 2).sum().backward()
    for name in ("weight", "bias", "fuse_weight", "fuse_bias"):
        a, b = getattr(plain, name), getattr(fused, name)
        if a is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6)
    w = plain.id_embedding.weight.detach().clone()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    rows = ids[ids != 0].unique()
    reference.embedding_sparse_update(w, m, v, rows, plain.id_embedding.weight.grad[rows], "adam", 0.01, 0.9,
                                      0.999, 1e-8, 0.0, 1, 0)
    torch.testing.assert_close(fused.id_embedding.weight, w, rtol=1e-5, atol=1e-6)
    assert not any(p is fused.id_embedding.weight for p in fused.parameters())  # no dense gradient, no Parameter
    table = fused.eval().table()
    torch.testing.assert_close(table[ids], fused(ids), rtol=1e-5, atol=1e-6)
