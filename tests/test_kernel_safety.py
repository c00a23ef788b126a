"""Kernels protect themselves: the host checks vanish under torch.compile, CUDA-graph capture and
validate=False, so every kernel bound-checks what it indexes with user data and gives a defined result
(or an error) for NaN rows, D = 0, bad ids and bad indptr. Each test here failed before its fix.

CUDA cases use the `device` fixture (marked `cuda`, skipped without a GPU); a device-side assert poisons
the CUDA context, so those run in a subprocess.
"""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fastrec import reference
from fastrec.ops import (
    lightgcn_propagate,
    nearest_code,
    residual_encode,
    semantic_fusion_lookup,
    semantic_fusion_weight_grad,
    splice_collab_rows,
    splice_collab_tokens,
    topk_scores,
    trie_mask,
)

triton = pytest.importorskip("triton")

# ------------------------------------------------------------------------------------- quantization


def test_zero_dim_rows_give_code_zero_at_distance_zero(device):
    """D = 0 divided by zero in the CPU and CUDA kernels (SIGFPE); every distance is 0, so code 0 wins."""
    index, sqdist = nearest_code(torch.randn(10, 0, device=device), torch.randn(4, 0, device=device))
    assert index.tolist() == [0] * 10 and sqdist.tolist() == [0.0] * 10
    codes, q = residual_encode(torch.randn(7, 0, device=device), torch.randn(3, 5, 0, device=device))
    assert codes.shape == (7, 3) and bool((codes == 0).all()) and q.shape == (7, 0)
    ref_index, ref_dist = reference.nearest_code(torch.randn(10, 0), torch.randn(4, 0))
    assert ref_index.tolist() == index.tolist() and ref_dist.tolist() == sqdist.tolist()


def test_zero_dim_in_the_triton_kernels(triton_device):
    from fastrec.kernels import quantize as tk

    x = torch.randn(9, 0, device=triton_device)
    index, sqdist = tk.nearest_code(x, x.new_empty(4, 0).normal_())
    assert index.tolist() == [0] * 9 and sqdist.tolist() == [0.0] * 9
    from fastrec.kernels import fusion as tf  # D = 0: the bias alone, and zero past the live (unique) rows

    bias = torch.randn(3, device=triton_device)
    rows = torch.tensor([0, 4, 4, 4], device=triton_device)
    for live, want in [(None, bias.expand(4, 3)), (torch.tensor(2, device=triton_device),
                                                   torch.cat([bias.expand(2, 3), bias.new_zeros(2, 3)]))]:
        got = tf.gather_reduce(x.new_empty(5, 0), rows, x.new_empty(3, 0), bias, live)
        assert torch.equal(got, want)


def _nan_rows(device):
    x = torch.randn(70, 12, device=device)
    x[3, 5] = float("nan")
    x[41] = float("nan")
    return x, torch.randn(40, 12, device=device)


def test_nan_rows_have_one_defined_result_in_every_backend(triton_device):
    """A NaN row: code 0 and a NaN distance (the reference and the Triton kernel, the CUDA backend)."""
    from fastrec.kernels import quantize as tk

    x, codebook = _nan_rows("cpu")
    ref_index, ref_dist = reference.nearest_code(x, codebook)
    tri_index, tri_dist = tk.nearest_code(x.to(triton_device), codebook.to(triton_device))
    for index, dist in ((ref_index, ref_dist), (tri_index.cpu(), tri_dist.cpu())):
        assert index[3] == 0 and index[41] == 0
        assert torch.isnan(dist[[3, 41]]).all()
        clean = torch.ones(70, dtype=torch.bool)
        clean[[3, 41]] = False
        assert torch.isfinite(dist[clean]).all()
    assert torch.equal(tri_index.cpu()[[0, 1, 2]], ref_index[[0, 1, 2]])
    ref_codes, _ = reference.residual_encode(x, codebook[None].repeat(2, 1, 1))
    assert ref_codes[3].tolist() == [0, 0] and ref_codes[41].tolist() == [0, 0]


@pytest.mark.cuda
def test_nan_rows_in_the_cuda_kernel(cuda_device):
    """The CUDA backend (the Triton kernel) alone, without the host check: a NaN row keeps code 0 (an argmin
    started at INT64_MAX once kept it and used it as an offset)."""
    x, codebook = _nan_rows(cuda_device)
    index, dist = torch.ops.fastrec.nearest_code(x, codebook)  # no host check: the kernel alone
    torch.cuda.synchronize()
    assert index[3].item() == 0 and index[41].item() == 0
    assert bool(torch.isnan(dist[[3, 41]]).all())
    codes, q = torch.ops.fastrec.residual_encode(x, codebook[None].repeat(3, 1, 1))
    torch.cuda.synchronize()
    assert bool(((codes >= 0) & (codes < 40)).all())
    assert codes[3].tolist() == [0, 0, 0]


def test_nan_rows_raise_at_the_checked_entry_point(device):
    x, codebook = _nan_rows(device)
    with pytest.raises(ValueError, match="NaN or Inf"):
        nearest_code(x, codebook)


# ------------------------------------------------------------------------------------------- fusion


def test_weight_grad_of_a_permutation_of_every_row(device):
    """U == I with rows[0] == 0 and rows[-1] == I - 1 was taken as the identity: wrong gradient."""
    sem = torch.randn(4, 6, device=device)
    rows = torch.tensor([0, 2, 1, 3], device=device)
    g = torch.randn(4, 3, device=device)
    got = semantic_fusion_weight_grad(rows, g, sem)
    torch.testing.assert_close(got, g.t() @ sem[rows])


def test_weight_grad_with_zero_width(device):
    """D = 0 divided by zero in the CPU kernel's block size."""
    got = semantic_fusion_weight_grad(torch.tensor([1, 0], device=device), torch.randn(2, 3, device=device),
                                      torch.randn(3, 0, device=device))
    assert got.shape == (3, 0)


def _fusion_tables(device, n_items=9, d=5, D=7):
    return (torch.randn(n_items, d, device=device), torch.randn(n_items, D, device=device),
            torch.randn(d, D, device=device), torch.randn(d, device=device))


def test_triton_lookup_clamps_ids_and_pads_only_with_a_padding_idx(triton_device):
    """Id -1 was taken as padding when no padding_idx was set, and ids were not clamped before the gathers."""
    from fastrec.ops.fusion import _triton_lookup

    dev = triton_device
    id_table, sem, w, b = _fusion_tables(dev)
    ids = torch.tensor([[-1, 3, 8], [0, -1, 2]], device=dev)
    out = _triton_lookup(ids, id_table, sem, w, b, None, None, "add", -1, 1)[0]
    want = reference.semantic_fusion_lookup(ids.clamp(0, 8), id_table, sem, w, b, None, None, "add", -1, 1)[0]
    torch.testing.assert_close(out, want)
    # with a padding_idx, that id (and only it) gives zero rows
    out = _triton_lookup(ids.clamp(min=0), id_table, sem, w, b, None, None, "add", 3, 1)[0]
    assert bool((out[0, 1] == 0).all()) and bool((out[0, 0] != 0).any())


@pytest.mark.cuda
def test_cuda_lookup_with_out_of_range_ids_reads_nothing_out_of_bounds(cuda_device):
    id_table, sem, w, b = _fusion_tables(cuda_device)
    ids = torch.tensor([[-7, 3, 10**6]], device=cuda_device)
    out = torch.ops.fastrec.semantic_fusion_lookup(ids, id_table, sem, w, b, None, None, "add", -1, 1)[0]
    torch.cuda.synchronize()
    want = reference.semantic_fusion_lookup(ids.clamp(0, 8), id_table, sem, w, b, None, None, "add", -1, 1)[0]
    torch.testing.assert_close(out, want)
    with pytest.raises(IndexError, match="item_ids out of range"):
        semantic_fusion_lookup(ids, id_table, sem, w, b)


# -------------------------------------------------------------------------------------------- splice


def test_splice_validate_false_reads_no_values():
    """validate=False was ignored by the placeholder checks: the HF path synced the host every forward.
    Meta tensors hold no values, so any value check raises; with validate=False none may run."""
    ids = torch.empty(2, 5, dtype=torch.int64, device="meta")
    weight = torch.empty(11, 4, device="meta")
    ph = torch.empty(2, dtype=torch.int64, device="meta")
    out = splice_collab_tokens(ids, weight, ph, torch.empty(3, 4, device="meta"), validate=False)
    assert out.shape == (2, 5, 4) and out.device.type == "meta"
    out = splice_collab_rows(ids, weight, ph, [torch.empty(1, 4, device="meta"), torch.empty(2, 4, device="meta")],
                             validate=False)
    assert out.shape == (2, 5, 4)
    with pytest.raises((NotImplementedError, RuntimeError)):  # the checks do read values when asked to
        splice_collab_tokens(ids, weight, ph, torch.empty(3, 4, device="meta"), validate=True)


def test_slot_index_with_type_counts_builds_no_tensor_from_a_list(monkeypatch):
    """The Triton splice built a device tensor from type_counts inside the op (no CUDA-graph capture)."""
    from fastrec.kernels import collab as kc

    calls = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: calls.append(a) or real(*a, **k))
    ids = torch.tensor([[5, 1, 6, 5], [6, 2, 5, 3]])
    weight, values = torch.randn(8, 4), torch.randn(5, 4)
    calls.clear()
    slot = kc.slot_index(ids, real([5, 6]), 5, [3, 2])
    out, pos = kc.splice_collab_tokens(ids, weight, real([5, 6]), values, [3, 2])
    assert calls == []
    assert slot.tolist() == [0, -1, 3, 1, 4, -1, 2, -1]
    assert pos.tolist() == [0, 3, 6, 2, 4]  # written by the kernel, one writer per slot row
    assert torch.equal(out.view(8, 4)[pos], values) and torch.equal(out.view(8, 4)[1], weight[1])


# --------------------------------------------------------------------------------------------- graph


def test_fake_kernels_return_contiguous_outputs_like_the_kernels():
    """residual_encode and lightgcn_propagate faked input-strided outputs (empty_like)."""
    x = torch.randn(6, 9).t()  # [9, 6], strides (1, 9)
    codebooks = torch.randn(2, 4, 6)
    indptr = torch.tensor([0, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    indices = torch.tensor([1, 0, 4, 3, 8])
    values = torch.ones(5)
    real_q = torch.ops.fastrec.residual_encode(x, codebooks)[1]
    real_l = torch.ops.fastrec.lightgcn_propagate(indptr, indices, values, indptr, indices, values, x, [0.5, 0.5])
    with FakeTensorMode() as mode:
        fx, fc = mode.from_tensor(x), mode.from_tensor(codebooks)
        fi, fj, fv = mode.from_tensor(indptr), mode.from_tensor(indices), mode.from_tensor(values)
        fake_q = torch.ops.fastrec.residual_encode(fx, fc)[1]
        fake_l = torch.ops.fastrec.lightgcn_propagate(fi, fj, fv, fi, fj, fv, fx, [0.5, 0.5])
    assert fake_q.stride() == real_q.stride() == (6, 1)
    assert fake_l.stride() == real_l.stride() == (6, 1)


def test_device_checks_look_at_every_tensor():
    emb = torch.randn(3, 2)
    indptr, indices, values = torch.tensor([0, 1, 2, 2]), torch.tensor([1, 0]), torch.ones(2)
    graph = torch.sparse_csr_tensor(indptr, indices, values, (3, 3))

    class Graph:
        is_symmetric = True

    g = Graph()
    g.indptr, g.indices, g.values = indptr, indices.to("meta"), values
    with pytest.raises(ValueError, match="different devices"):
        lightgcn_propagate(g, emb)
    g.indices, g.values = indices, values.to("meta")
    with pytest.raises(ValueError, match="different devices"):
        lightgcn_propagate(g, emb)
    assert lightgcn_propagate(graph, emb).shape == (3, 2)
    with pytest.raises(ValueError, match="different devices"):
        topk_scores(torch.randn(3, 2), torch.randn(4, 2), 2, exclude=(torch.tensor([0, 0, 0, 0]),
                                                                    torch.empty(0, dtype=torch.int64, device="meta")))
    trie = (torch.tensor([0, 1, 1]), torch.tensor([2]), torch.tensor([1]))
    with pytest.raises(ValueError, match="different devices"):
        trie_mask(torch.randn(2, 4), torch.zeros(2, 0, dtype=torch.int64), trie[0], trie[1].to("meta"), trie[2],
                  validate=False)


def _dense_lightgcn(a: torch.Tensor, emb: torch.Tensor, layers: int) -> torch.Tensor:
    out, x = emb / (layers + 1), emb
    for _ in range(layers):
        x = a @ x
        out = out + x / (layers + 1)
    return out


def test_lightgcn_module_with_a_non_symmetric_graph_has_the_right_gradient():
    """nn.LightGCN declared every graph symmetric, so a non-symmetric CSR got A's gradient instead of A^T's."""
    from fastrec.nn import LightGCN

    a = torch.rand(7, 7) * (torch.rand(7, 7) < 0.4)
    model = LightGCN(3, 4, dim=5, num_layers=2, graph=a.to_sparse_csr())
    users, items = model()
    w = torch.randn(7, 5)
    (torch.cat([users, items]) * w).sum().backward()
    emb = model.embedding.weight.detach().clone().requires_grad_(True)
    (_dense_lightgcn(a, emb, 2) * w).sum().backward()
    torch.testing.assert_close(model.embedding.weight.grad, emb.grad)
    sym = a + a.t()
    assert LightGCN(3, 4, dim=5, graph=sym.to_sparse_csr())._symmetric
    assert not model._symmetric


# ---------------------------------------------------------------------------------------------- trie


def _bad_trie(device):
    # node 1's edge range [1, 10**6) runs far past the 2 edges; node 2's is inverted
    indptr = torch.tensor([0, 1, 10**6, 1], device=device)
    tokens = torch.tensor([3, 5], device=device)
    children = torch.tensor([1, 2], device=device)
    return indptr, tokens, children


def test_triton_trie_mask_clamps_a_bad_indptr(triton_device):
    from fastrec.kernels import trie as tk

    dev = triton_device
    indptr, tokens, children = _bad_trie(dev)
    scores = torch.randn(3, 8, device=dev)
    generated = torch.tensor([[3], [4], [3]], device=dev)
    out = tk.trie_mask(scores, generated, indptr, tokens, children, float("-inf")).cpu()
    # row 0 walked to node 1, whose range clamps to [1, 2): token 5 only
    assert torch.isfinite(out[0]).tolist() == [False] * 5 + [True] + [False] * 2
    assert not torch.isfinite(out[1]).any()


def test_trie_mask_bad_indptr_without_validation(device):
    """The CUDA kernel read indptr unchecked; the CPU kernel checks it inside its pass (an error)."""
    indptr, tokens, children = _bad_trie(device)
    scores = torch.randn(3, 8, device=device)
    generated = torch.tensor([[3], [4], [3]], device=device)
    if device.type == "cpu":
        with pytest.raises(ValueError, match="indptr"):
            trie_mask(scores, generated, indptr, tokens, children, validate=False)
        return
    out = trie_mask(scores, generated, indptr, tokens, children, validate=False)
    torch.cuda.synchronize()
    assert torch.isfinite(out[0]).cpu().tolist() == [False] * 5 + [True] + [False] * 2


# ------------------------------------------------------------------- CUDA device-side asserts (subprocess)

_ASSERT_SCRIPT = textwrap.dedent("""
    import torch, fastrec
    indptr, indices = {indptr}, {indices}
    out = torch.ops.fastrec.spmm(torch.tensor(indptr, device="cuda"), torch.tensor(indices, device="cuda"),
                                 torch.ones(len(indices), device="cuda"), torch.randn(4, 3, device="cuda"))
    torch.cuda.synchronize()
    print("NO ERROR")
""")


@pytest.mark.cuda
@pytest.mark.parametrize("indptr,indices", [([0, 1, 2], [0, 9]), ([0, 5, 2], [0, 1]), ([0, -3, 2], [0, 1])],
                         ids=["column-out-of-range", "indptr-past-nnz", "indptr-negative"])
def test_cuda_spmm_bad_csr_is_a_device_side_error(cuda_device, indptr, indices):
    """CUDA spmm dropped out-of-range columns silently where the CPU raises, and read indptr unchecked."""
    code = _ASSERT_SCRIPT.format(indptr=indptr, indices=indices)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "NO ERROR" not in run.stdout, run.stdout + run.stderr
    assert "assert" in run.stderr.lower(), run.stderr[-2000:]


@pytest.mark.parametrize("indptr,indices", [([0, 1, 2], [0, 9]), ([0, 5, 2], [0, 1])])
def test_cpu_spmm_bad_csr_raises(indptr, indices):
    with pytest.raises((IndexError, ValueError)):
        torch.ops.fastrec.spmm(torch.tensor(indptr), torch.tensor(indices), torch.ones(len(indices)),
                               torch.randn(4, 3))


@pytest.mark.cuda
def test_cuda_splice_bad_ids_without_validation_are_clamped(cuda_device):
    """validate=False skips the host checks on CUDA: out-of-range token ids and a short slot list are clamped
    inside the kernel (a defined result, nothing read out of bounds); validate=True raises."""
    ids = torch.tensor([[3, 98, 700, -5]], device=cuda_device)
    weight = torch.randn(100, 7, device=cuda_device)
    ph = torch.tensor([98], device=cuda_device)
    values = torch.randn(1, 7, device=cuda_device)
    out = splice_collab_tokens(ids, weight, ph, values, validate=False)
    torch.cuda.synchronize()
    want = torch.stack([weight[3], values[0], weight[99], weight[0]])[None]
    torch.testing.assert_close(out, want)
    with pytest.raises(IndexError):
        splice_collab_tokens(ids, weight, ph, values, validate=True)
