"""splice_collab_tokens / splice_collab_rows / collab_inputs_embeds against the reference: values, gradients,
dtypes, opcheck, torch.compile(fullgraph=True), Triton under the interpreter, properties and bad input."""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastrec import reference
from fastrec.ops import collab_inputs_embeds, splice_collab_rows, splice_collab_tokens

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# CPU tensors through the Triton kernels: only under the interpreter (set without a GPU); on a GPU the
# cuda-marked tests run the same kernels in their GPU block sizes.
INTERPRETER_ONLY = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                      reason="needs TRITON_INTERPRET=1 (no GPU)")



def make(b, t, v, h, ph=(3, 7, 11), per_row=(1, 1, 1), dtype=torch.float32, seed=0, index_dtype=torch.int64):
    """input_ids with `per_row[s]` occurrences of placeholder s per row, at random positions."""
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    ph_t = torch.tensor(ph)
    ids = torch.randint(0, v, (b, t), generator=g)
    while torch.isin(ids, ph_t).any():  # no accidental placeholders
        bad = torch.isin(ids, ph_t)
        ids[bad] = torch.randint(0, v, (int(bad.sum()),), generator=g)
    for r in range(b):
        pos = torch.randperm(t, generator=g)[: sum(per_row)]
        ids[r, pos] = torch.repeat_interleave(ph_t, torch.tensor(per_row))
    w = torch.randn(v, h, generator=g).to(dtype)
    n = b * sum(per_row)
    vals = torch.randn(n, h, generator=g).to(dtype)
    return ids.to(index_dtype), w, ph_t, vals


@pytest.mark.parametrize("b,t,v,h", [(1, 1, 12, 1), (3, 17, 40, 5), (4, 64, 300, 129)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_splice_matches_reference(b, t, v, h, dtype, on_device):
    per_row = (1, 0, 0) if t == 1 else (1, 1, 1)
    ids, w, ph, vals = make(b, t, v, h, per_row=per_row, dtype=dtype)
    out = splice_collab_tokens(ids, w, ph, vals)
    ref, _ = reference.splice_collab_tokens(ids, w, ph, vals)
    assert out.dtype == dtype and out.shape == (b, t, h)
    assert torch.equal(out, ref)  # a copy: exact in every dtype


def test_int32_ids_and_many_slots_per_prompt(on_device):
    ids, w, ph, vals = make(5, 40, 60, 9, per_row=(1, 10, 2), index_dtype=torch.int32)
    out = splice_collab_tokens(ids, w, ph, vals)
    assert torch.equal(out, reference.splice_collab_tokens(ids, w, ph, vals)[0])
    # rows by type: occurrence order inside each type is row-major
    flat = ids.reshape(-1).long()
    per_type = [vals[: (flat == p).sum()] for p in ph]
    out2 = splice_collab_rows(ids, w, ph, per_type)
    for p, rows in zip(ph, per_type, strict=True):
        assert torch.equal(out2.reshape(-1, 9)[flat == p], rows)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_match_reference(dtype, on_device):
    ids, w, ph, vals = make(3, 21, 50, 7, per_row=(2, 1, 1), dtype=dtype)
    w.requires_grad_(True)
    vals.requires_grad_(True)
    grad = torch.randn(3, 21, 7).to(dtype)
    got = torch.autograd.grad(splice_collab_tokens(ids, w, ph, vals), (w, vals), grad)
    want = torch.autograd.grad(reference.splice_collab_tokens(ids, w, ph, vals)[0], (w, vals), grad)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g.float(), r.float(), rtol=TOL[dtype], atol=TOL[dtype])
    # placeholder rows of the token table get no gradient
    assert torch.all(got[0][ph] == 0)


def test_gradients_duplicates_accumulate_in_fp32(on_device):
    ids = torch.full((4, 300), 5)
    ids[:, 0] = 1
    w = torch.randn(8, 3, dtype=torch.bfloat16, requires_grad=True)
    vals = torch.randn(4, 3, dtype=torch.bfloat16, requires_grad=True)
    out = splice_collab_tokens(ids, w, torch.tensor([1]), vals)
    (gw,) = torch.autograd.grad(out.sum(), (w,))
    assert gw[5].float().tolist() == [1200.0] * 3 and gw[1].float().abs().sum() == 0


def test_collab_inputs_embeds_matches_reference_with_grads(on_device):
    g = torch.Generator(torch.get_default_device()).manual_seed(1)
    ids, w, ph, _ = make(4, 30, 80, 16, per_row=(1, 3, 1))
    d, mid, hw = 6, 10, 5
    tables = [torch.randn(9, d, generator=g), torch.randn(13, d, generator=g), torch.randn(13, hw, generator=g)]
    projs = [(torch.randn(mid, d), torch.randn(mid), torch.randn(16, mid), torch.randn(16)),
             (torch.randn(mid, d), torch.randn(mid), torch.randn(16, mid), torch.randn(16)),
             (torch.randn(16, hw), torch.randn(16))]
    slot_ids = [torch.randint(0, 9, (4,)), torch.randint(0, 13, (12,)), torch.randint(0, 13, (4,))]
    slot_ids[1][:2] = 12  # duplicates and the last row
    leaves = [w, *tables, *[p for proj in projs for p in proj]]
    for x in leaves:
        x.requires_grad_(True)
    out = collab_inputs_embeds(ids, w, ph, slot_ids, tables, projs)
    ref = reference.collab_inputs_embeds(ids, w, ph, slot_ids, tables, projs)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad)
    want = torch.autograd.grad(ref, leaves, grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_empty_inputs_give_empty_outputs(on_device):
    w = torch.randn(10, 4)
    out = splice_collab_tokens(torch.empty(0, 5, dtype=torch.int64), w, torch.tensor([2]), torch.empty(0, 4))
    assert out.shape == (0, 5, 4)
    out = splice_collab_tokens(torch.tensor([[1, 3]]), w, torch.tensor([2]), torch.empty(0, 4))
    assert torch.equal(out[0], w[[1, 3]])


OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor")


def test_opcheck(on_device):
    ids, w, ph, vals = make(2, 9, 20, 5, per_row=(1, 2, 0))
    w.requires_grad_(True)
    vals.requires_grad_(True)
    op = torch.ops.fastrec.splice_collab_tokens.default
    torch.library.opcheck(op, (ids, w, ph, vals), test_utils=OPCHECK_UTILS)
    torch.library.opcheck(op, (ids, w, ph, vals, [2, 4, 0]), test_utils=OPCHECK_UTILS)


def test_torch_compile_fullgraph_forward_and_backward(on_device):
    ids, w, ph, _ = make(3, 12, 30, 8, per_row=(1, 1, 1))
    table = torch.randn(10, 4, requires_grad=True)
    proj = (torch.randn(8, 4, requires_grad=True), torch.randn(8, requires_grad=True))
    slot = [torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]), torch.tensor([0, 9, 9])]

    def f(ids, w, table, w0, b0):
        e = collab_inputs_embeds(ids, w, ph, slot, [table] * 3, [(w0, b0)] * 3)
        return (e * e).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = (ids, w, table, *proj)
    got = torch.autograd.grad(compiled(*args), (table, *proj))
    want = torch.autograd.grad(f(*args), (table, *proj))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


@INTERPRETER_ONLY
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("counts", [None, [2, 3, 1]])
def test_triton_kernel_under_interpreter(dtype, counts):
    pytest.importorskip("triton")
    from fastrec.kernels import collab as tk

    ids, w, ph, vals = make(2, 33, 70, 37, per_row=(1, 1, 1), dtype=dtype)
    if counts is not None:
        ids[1, ids[1] == 11] = 7  # type counts become [2, 3, 1]
    ref, ref_pos = reference.splice_collab_tokens(ids, w, ph, vals, counts)
    # the GPU's small blocks too: several column blocks a row band, ragged in both directions
    for blocks in (None, (16, 16)):
        out, pos = tk.splice_collab_tokens(ids, w, ph, vals, counts, blocks=blocks)
        assert torch.equal(out, ref) and torch.equal(pos, ref_pos)
    # a count mismatch never reads out of bounds: extra occurrences keep their token rows
    out, _ = tk.splice_collab_tokens(ids, w, ph, vals[:4])
    assert out.shape == ref.shape and torch.isfinite(out.float()).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(b=st.integers(0, 5), t=st.integers(1, 20), h=st.integers(1, 24), s=st.integers(1, 3),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1), boundary=st.booleans())
def test_property_against_reference(b, t, h, s, dtype, seed, boundary, on_device):
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    v = 12
    ph = torch.tensor([v - 1, 0, 5][:s]) if boundary else torch.randperm(v, generator=g)[:s]
    ids = torch.randint(0, v, (b, t), generator=g)  # placeholders anywhere, any number, adjacent
    n = int(torch.isin(ids, ph).sum())
    w = torch.randn(v, h, generator=g).to(dtype)
    vals = torch.randn(n, h, generator=g).to(dtype)
    out = splice_collab_tokens(ids, w, ph, vals)
    assert torch.equal(out, reference.splice_collab_tokens(ids, w, ph, vals)[0])


def _ids():
    return torch.tensor([[1, 2, 3], [2, 4, 0]])


BAD = [
    (lambda: splice_collab_tokens(_ids(), torch.randn(5, 3), torch.tensor([2]), torch.randn(3, 3)),
     ValueError, "3 rows but input_ids holds 2"),
    (lambda: splice_collab_tokens(_ids(), torch.randn(5, 3), torch.tensor([2]), torch.randn(1, 3)),
     ValueError, "1 rows but input_ids holds 2"),
    (lambda: splice_collab_tokens(_ids() + 3, torch.randn(5, 3), torch.tensor([2]), torch.randn(0, 3)),
     IndexError, "input_ids holds id 5 at flat position 1"),
    (lambda: splice_collab_tokens(_ids() - 1, torch.randn(5, 3), torch.tensor([2]), torch.randn(2, 3)),
     IndexError, "input_ids holds id -1"),
    (lambda: splice_collab_tokens(_ids(), torch.randn(5, 3), torch.tensor([5]), torch.randn(0, 3)),
     IndexError, "placeholder_ids holds id 5"),
    (lambda: splice_collab_tokens(_ids(), torch.randn(5, 3), torch.tensor([2, 2]), torch.randn(2, 3)),
     ValueError, "placeholder_ids has repeated"),
    (lambda: splice_collab_tokens(_ids(), torch.randn(5, 3), torch.tensor([2]), torch.randn(2, 3).double()),
     ValueError, "slot_values must have dtype"),
    (lambda: splice_collab_tokens(_ids(), torch.randn(5, 3), torch.tensor([2]), torch.randn(2, 3).half()),
     ValueError, "differ in dtype"),
    (lambda: splice_collab_tokens(_ids(), torch.randn(5, 3), torch.tensor([2]), torch.randn(2, 4)),
     ValueError, "slot_values has H=4"),
    (lambda: splice_collab_tokens(_ids().float(), torch.randn(5, 3), torch.tensor([2]), torch.randn(2, 3)),
     ValueError, "input_ids must have dtype"),
    (lambda: splice_collab_tokens(_ids()[0], torch.randn(5, 3), torch.tensor([2]), torch.randn(2, 3)),
     ValueError, "input_ids must be 2-D"),
    (lambda: splice_collab_tokens(_ids(), torch.randn(5, 3), 2, torch.randn(2, 3)),
     TypeError, "placeholder_ids must be a torch.Tensor"),
    (lambda: splice_collab_tokens(_ids(), torch.randn(0, 3), torch.tensor([2]), torch.randn(2, 3)),
     ValueError, "V = 0"),
    (lambda: splice_collab_rows(_ids(), torch.randn(5, 3), torch.tensor([2, 4]),
                                [torch.randn(2, 3), torch.randn(0, 3)]),
     ValueError, r"holds \[2, 1\] placeholder occurrences per type but \[2, 0\]"),
    (lambda: splice_collab_rows(_ids(), torch.randn(5, 3), torch.tensor([2, 4]), [torch.randn(2, 3)]),
     ValueError, "one tensor per placeholder"),
    (lambda: collab_inputs_embeds(_ids(), torch.randn(5, 3), torch.tensor([2]), [torch.tensor([0, 4])],
                                  [torch.randn(4, 2)], [(torch.randn(3, 2), torch.randn(3))]),
     IndexError, r"slot_ids\[0\] holds id 4"),
    (lambda: collab_inputs_embeds(_ids(), torch.randn(5, 3), torch.tensor([2]), [torch.tensor([0, 1])],
                                  [torch.randn(4, 2).half()], [(torch.randn(3, 2), torch.randn(3))]),
     ValueError, "differ in dtype"),
    (lambda: collab_inputs_embeds(_ids(), torch.randn(5, 3), torch.tensor([2]), [torch.tensor([0, 1])],
                                  [torch.randn(4, 2)], [(torch.randn(3, 5), torch.randn(3))]),
     ValueError, "takes d=5"),
    (lambda: collab_inputs_embeds(_ids(), torch.randn(5, 3), torch.tensor([2]), [torch.tensor([0, 1])],
                                  [torch.randn(4, 2)], [(torch.randn(4, 2), torch.randn(4))]),
     ValueError, "outputs 4"),
    (lambda: collab_inputs_embeds(_ids(), torch.randn(5, 3), torch.tensor([2]), [], [], []),
     ValueError, "slot_ids needs one entry"),
]


@pytest.mark.parametrize("call,exc,match", BAD)
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_kernel_itself_rejects_bad_counts_and_ids():
    """A direct torch.ops call (no Python checks) still cannot write garbage or read out of bounds."""
    op = torch.ops.fastrec.splice_collab_tokens
    with pytest.raises(ValueError, match="placeholder occurrences"):
        op(_ids(), torch.randn(5, 3), torch.tensor([2]), torch.randn(3, 3))
    with pytest.raises(IndexError, match="outside the vocabulary"):
        op(_ids() * 3, torch.randn(5, 3), torch.tensor([2]), torch.randn(0, 3))
    with pytest.raises(ValueError, match="type_counts sum"):
        op(_ids(), torch.randn(5, 3), torch.tensor([2]), torch.randn(2, 3), [3])


def test_python_checks_cover_backends_without_the_cpu_kernel(monkeypatch):
    """Where the C++ kernel does not check (CUDA / Triton / reference fallback), the entry point does."""
    import fastrec.ops._library as lib

    monkeypatch.setattr(lib, "cpu_is_compiled", lambda name: False)
    with pytest.raises(ValueError, match=r"holds \[2\] placeholder occurrences per type but \[3\]"):
        splice_collab_tokens(_ids(), torch.randn(5, 3), torch.tensor([2]), torch.randn(3, 3))
    with pytest.raises(IndexError, match="input_ids holds id 12, outside"):
        splice_collab_tokens(_ids() * 3, torch.randn(5, 3), torch.tensor([2]), torch.randn(0, 3))
    ids, w, ph, vals = make(2, 9, 20, 5)
    assert torch.equal(splice_collab_tokens(ids, w, ph, vals), reference.splice_collab_tokens(ids, w, ph, vals)[0])


@INTERPRETER_ONLY
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_fused_gather_projection_under_interpreter(dtype):
    pytest.importorskip("triton")
    from fastrec.kernels import collab as tk

    from fastrec.ops.collab import project_rows

    g = torch.Generator(torch.get_default_device()).manual_seed(3)
    table = torch.randn(30, 20, generator=g).to(dtype)
    ids = torch.tensor([0, 29, 5, 5, 17, 3, 8])
    mlp = tuple(t.to(dtype) for t in (torch.randn(40, 20, generator=g) / 4, torch.randn(40, generator=g),
                                      torch.randn(70, 40, generator=g) / 6, torch.randn(70, generator=g)))
    lin = (mlp[0], None)
    for proj in (mlp, lin):
        got = tk.project_gathered(table, ids, proj)
        want = project_rows(table.float()[ids], tuple(t.float() if t is not None else None for t in proj))
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)


# ---- zero host syncs with validate=False: forward and backward of every splice op


@pytest.fixture
def cuda_path_on_cpu(monkeypatch):
    """The code CUDA runs, on CPU tensors: the op's CPU kernel swapped for the Triton one (the CUDA backend,
    under the interpreter) and the fused Triton gather + projection for no-grad calls, as on a GPU."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 (no GPU)")
    import warnings

    from fastrec.kernels import collab as tk

    from fastrec.ops import collab as ops_collab

    calls = []

    def counted(fn):
        def run(*args):
            calls.append(fn.__name__)
            return fn(*args)
        return run

    lib = torch.library.Library("fastrec", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel": restored by _destroy
        lib.impl("splice_collab_tokens", counted(tk.splice_collab_tokens), "CPU")
    fused = lambda w, tables, projs: not (torch.is_grad_enabled() and any(  # noqa: E731
        t.requires_grad for t in [*tables, *[x for p in projs for x in p if x is not None]]))
    monkeypatch.setattr(ops_collab, "_fused_projection", fused)
    monkeypatch.setattr(tk, "project_gathered", counted(tk.project_gathered))
    try:
        yield calls
    finally:
        lib._destroy()


def _splice_case(seed=4):
    """Inputs of every splice op: ids with 1, 2, 1 occurrences of 3 placeholders per row, tables, projections."""
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    ids, w, ph, vals = make(3, 19, 40, 12, per_row=(1, 2, 1), seed=seed)
    flat = ids.reshape(-1)
    counts = [int((flat == p).sum()) for p in ph]
    per_type = list(torch.randn(sum(counts), 12, generator=g).split(counts))
    d = 5
    tables = [torch.randn(7, d, generator=g) for _ in ph]
    projs = [(torch.randn(9, d, generator=g), torch.randn(9, generator=g), torch.randn(12, 9, generator=g),
              torch.randn(12, generator=g)), (torch.randn(12, d, generator=g), None),
             (torch.randn(12, d, generator=g), torch.randn(12, generator=g))]
    slot_ids = [torch.randint(0, 7, (c,), generator=g) for c in counts]
    return dict(ids=ids, w=w, ph=ph, vals=vals, per_type=per_type, counts=counts, tables=tables, projs=projs,
                slot_ids=slot_ids, grad=torch.randn(3, 19, 12, generator=g))


def _leaves(c):
    return [c["w"], c["vals"], *c["per_type"], *c["tables"], *[x for p in c["projs"] for x in p if x is not None]]


def _run_every_splice(c, validate=False):
    """(outputs, gradients) of splice_collab_tokens, splice_collab_rows, collab_inputs_embeds (with grads)
    and collab_inputs_embeds without grads (the fused projection on a GPU)."""
    w, vals, per_type = c["w"], c["vals"], c["per_type"]
    out1 = splice_collab_tokens(c["ids"], w, c["ph"], vals, validate=validate)
    g1 = torch.autograd.grad(out1, (w, vals), c["grad"])
    out2 = splice_collab_rows(c["ids"], w, c["ph"], per_type, validate=validate)
    g2 = torch.autograd.grad(out2, (w, *per_type), c["grad"])
    leaves = [w, *c["tables"], *[x for p in c["projs"] for x in p if x is not None]]
    out3 = collab_inputs_embeds(c["ids"], w, c["ph"], c["slot_ids"], c["tables"], c["projs"], validate=validate)
    g3 = torch.autograd.grad(out3, leaves, c["grad"])
    with torch.no_grad():
        out4 = collab_inputs_embeds(c["ids"], w, c["ph"], c["slot_ids"], c["tables"], c["projs"], validate=validate)
    return [out1, out2, out3, out4], [*g1, *g2, *g3]


def _reference_every_splice(c):
    w = c["w"]
    ref1 = reference.splice_collab_tokens(c["ids"], w, c["ph"], c["vals"])[0]
    ref2 = reference.splice_collab_tokens(c["ids"], w, c["ph"], torch.cat(c["per_type"]), c["counts"])[0]
    ref3 = reference.collab_inputs_embeds(c["ids"], w, c["ph"], c["slot_ids"], c["tables"], c["projs"])
    g1 = torch.autograd.grad(ref1, (w, c["vals"]), c["grad"])
    g2 = torch.autograd.grad(ref2, (w, *c["per_type"]), c["grad"])
    leaves = [w, *c["tables"], *[x for p in c["projs"] for x in p if x is not None]]
    g3 = torch.autograd.grad(ref3, leaves, c["grad"])
    return [ref1, ref2, ref3, ref3], [*g1, *g2, *g3]


def _assert_every_splice(got, want):
    for a, b in zip(got[0] + got[1], want[0] + want[1], strict=True):
        torch.testing.assert_close(a.cpu(), b.detach().cpu(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", ["cpu kernel", "cuda path"])
def test_every_splice_forward_backward_validate_false_uses_no_syncing_op(path, no_sync_ops, request):
    calls = request.getfixturevalue("cuda_path_on_cpu") if path == "cuda path" else None
    c = _splice_case()
    for t in _leaves(c):
        t.requires_grad_(True)
    with no_sync_ops():
        got = _run_every_splice(c)
    _assert_every_splice(got, _reference_every_splice(c))
    if calls is not None:  # the Triton splice ran for all four calls, the fused projection for the no-grad one
        assert calls.count("splice_collab_tokens") == 4 and calls.count("project_gathered") == 3


def test_validate_true_does_check_and_validate_false_skips_the_host_checks(no_sync_ops):
    c = _splice_case()
    with pytest.raises(AssertionError, match="syncs"), no_sync_ops():
        splice_collab_tokens(c["ids"], c["w"], c["ph"], c["vals"])  # the placeholder checks read values
    bad = c["ph"].clone()
    bad[1] = bad[0]
    with pytest.raises(ValueError, match="repeated"):
        splice_collab_tokens(c["ids"], c["w"], bad, c["vals"])
    # without the host checks the CPU kernel still refuses a count mismatch inside its pass
    with pytest.raises(ValueError, match="placeholder occurrences"):
        splice_collab_tokens(c["ids"], c["w"], c["ph"], c["vals"][:-1], validate=False)


@pytest.mark.parametrize("path", ["kernel", "cuda path"])
@pytest.mark.parametrize("op", ["tokens", "rows", "inputs_embeds"])
def test_torch_compile_fullgraph_forward_backward_validate_false(op, path, on_device, request):
    if path == "cuda path":  # the Triton splice on CPU tensors (on a GPU the "kernel" case runs it already)
        if on_device.type != "cpu":
            pytest.skip("the device's own kernel is the CUDA path")
    calls = request.getfixturevalue("cuda_path_on_cpu") if path == "cuda path" else None
    c = _splice_case(seed=6)
    ph, slot_ids, projs = c["ph"], c["slot_ids"], c["projs"]

    def f(ids, w, vals, t0, t1, t2, *rows):
        if op == "tokens":
            e = splice_collab_tokens(ids, w, ph, vals, validate=False)
        elif op == "rows":
            e = splice_collab_rows(ids, w, ph, list(rows), validate=False)
        else:
            e = collab_inputs_embeds(ids, w, ph, slot_ids, [t0, t1, t2], projs, validate=False)
        return (e * e).sum()

    args = (c["ids"], c["w"], c["vals"], *c["tables"], *c["per_type"])
    for t in args[1:]:
        t.requires_grad_(True)
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(*args), args[1:], allow_unused=True)
    want = torch.autograd.grad(f(*args), args[1:], allow_unused=True)
    for a, b in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
    assert calls is None or "splice_collab_tokens" in calls
