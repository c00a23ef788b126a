"""Collaborative-graph ops: CSR x dense, fused LightGCN propagation, full-ranking top-K.

    out = fastrec.ops.spmm(indptr, indices, values, dense)                 # A @ dense, A in CSR
    final = fastrec.ops.lightgcn_propagate(graph, emb, num_layers=3)       # mean of layers 0..L
    scores, ids = fastrec.ops.topk_scores(queries, items, k, exclude=seen) # never U x I in memory

All three are `torch.ops.fastrec.*` custom ops with fake kernels and autograd. The C++ CPU kernels run
OpenMP over rows (balanced by nnz), keep each row's output in AVX-512 registers, and fuse the LightGCN
layer accumulation into every SpMM pass; the backward of the propagation is the same kernel over the
transpose (the symmetric normalised adjacency is its own transpose). topk_scores multiplies a cache-sized
tile of users x items at a time, masks the seen items in the tile and keeps a running top-K per user.
On CUDA, spmm and the LightGCN passes split the work by nnz (merge path, csrc/cuda/graph_kernels.cuh): long
rows are shared by several warps and combined in a fixed order, so results are deterministic; see docs/gpu.md.
"""

from __future__ import annotations

from typing import Any

import torch

from fastrec import reference
from fastrec.ops import _checks
from fastrec.ops._library import HAS_TRITON, cpu_is_compiled, define

_LIGHTGCN_SCHEMA = (
    "(Tensor indptr, Tensor indices, Tensor values, Tensor t_indptr, Tensor t_indices, Tensor t_values, "
    "Tensor emb, float[] layer_weights) -> Tensor"
)


def _triton_topk(queries, items, k, exclude_indptr, exclude_indices):
    """The Triton top-K (kernels/topk.py) where it applies: k <= 128 and d > 0; else the reference."""
    from fastrec.kernels import topk as kernels

    if not kernels.supports(queries, items, k):
        return reference.topk_scores(queries, items, k, exclude_indptr, exclude_indices)
    return kernels.topk_scores(queries, items, k, exclude_indptr, exclude_indices)


define("spmm", "(Tensor indptr, Tensor indices, Tensor values, Tensor dense) -> Tensor", reference.spmm)
define("lightgcn_propagate", _LIGHTGCN_SCHEMA, reference.lightgcn_propagate)
# the merge-path partition of the CUDA SpMM (csrc/common/graph.h); an internal op for tests and benchmarks
define("_graph_partition", "(Tensor indptr, int nnz, int items_per_worker) -> Tensor", reference.graph_partition)
define(
    "topk_scores",
    "(Tensor queries, Tensor items, int k, Tensor? exclude_indptr, Tensor? exclude_indices) -> (Tensor, Tensor)",
    reference.topk_scores,
    _triton_topk if HAS_TRITON else None,
)


@torch.library.register_fake("fastrec::spmm")
def _(indptr, indices, values, dense):
    return dense.new_empty(indptr.shape[0] - 1, dense.shape[1])


@torch.library.register_fake("fastrec::lightgcn_propagate")
def _(indptr, indices, values, t_indptr, t_indices, t_values, emb, layer_weights):
    return emb.new_empty(emb.shape)  # contiguous, as every kernel returns it


@torch.library.register_fake("fastrec::_graph_partition")
def _(indptr, nnz, items_per_worker):
    workers = (indptr.shape[0] - 1 + nnz + items_per_worker - 1) // items_per_worker
    return indptr.new_empty(workers, 6, dtype=torch.int64)


@torch.library.register_fake("fastrec::topk_scores")
def _(queries, items, k, exclude_indptr, exclude_indices):
    u = queries.shape[0]
    return queries.new_empty(u, k, dtype=torch.float32), queries.new_empty(u, k, dtype=torch.int64)


# ------------------------------------------------------------------------------------------ autograd


def csr_transpose(
    indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, num_cols: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR of ``A^T`` (``num_cols`` rows) with torch ops: a stable sort of the column ids. Every shape is
    known from the inputs' shapes (row ids by searchsorted, column counts by index_add), so nothing syncs
    the host and it traces under torch.compile(fullgraph=True)."""
    nnz = indices.numel()
    rows = torch.searchsorted(indptr.long(), torch.arange(nnz, device=indptr.device), right=True) - 1
    order = torch.sort(indices, stable=True).indices
    counts = torch.zeros(num_cols, dtype=torch.int64, device=indptr.device)
    counts.index_add_(0, indices.long(), torch.ones(nnz, dtype=torch.int64, device=indptr.device))
    t_indptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return t_indptr.to(indptr.dtype), rows[order].to(indices.dtype), values[order]


def _spmm_setup(ctx, inputs, output):
    indptr, indices, values, dense = inputs
    ctx.save_for_backward(indptr, indices, values, dense)


def _spmm_backward(ctx, grad):
    indptr, indices, values, dense = ctx.saved_tensors
    grad_values = grad_dense = None
    if ctx.needs_input_grad[2]:  # d out[i] / d A[i, j] = dense[j]
        counts = (indptr[1:] - indptr[:-1]).long()
        rows = torch.repeat_interleave(torch.arange(counts.numel(), device=grad.device), counts)
        grad_values = (grad[rows].float() * dense[indices.long()].float()).sum(1).to(values.dtype)
    if ctx.needs_input_grad[3]:
        t_indptr, t_indices, t_values = csr_transpose(indptr, indices, values.detach(), dense.shape[0])
        grad_dense = torch.ops.fastrec.spmm(t_indptr, t_indices, t_values, grad.contiguous())
    return None, None, grad_values, grad_dense


def _lightgcn_setup(ctx, inputs, output):
    indptr, indices, values, t_indptr, t_indices, t_values, emb, weights = inputs
    ctx.weights = list(weights)
    ctx.save_for_backward(indptr, indices, values, t_indptr, t_indices, t_values)


def _lightgcn_backward(ctx, grad):
    indptr, indices, values, t_indptr, t_indices, t_values = ctx.saved_tensors
    # d/d emb of sum_l w_l A^l emb is sum_l w_l (A^T)^l grad: the same kernel over the transpose
    grad_emb = torch.ops.fastrec.lightgcn_propagate(
        t_indptr, t_indices, t_values, indptr, indices, values, grad.contiguous(), ctx.weights
    )
    return None, None, None, None, None, None, grad_emb, None


def _topk_setup(ctx, inputs, output):
    queries, items, k, _, _ = inputs
    ctx.save_for_backward(queries, items, output[0], output[1])


def _topk_backward(ctx, grad_scores, grad_ids):
    queries, items, scores, ids = ctx.saved_tensors
    if grad_scores is None:
        return None, None, None, None, None
    # an excluded item's score is the constant -inf: no gradient flows through it
    g = torch.where(torch.isfinite(scores), grad_scores.float(), torch.zeros_like(scores))
    grad_q = grad_i = None
    if ctx.needs_input_grad[0]:
        grad_q = torch.einsum("uk,ukd->ud", g, items[ids].float()).to(queries.dtype)
    if ctx.needs_input_grad[1]:
        contrib = (g[:, :, None] * queries.float()[:, None, :]).reshape(-1, queries.shape[1])
        grad_i = torch.zeros(items.shape, dtype=torch.float32, device=items.device)
        grad_i = grad_i.index_add(0, ids.reshape(-1), contrib).to(items.dtype)
    return grad_q, grad_i, None, None, None


torch.library.register_autograd("fastrec::spmm", _spmm_backward, setup_context=_spmm_setup)
torch.library.register_autograd("fastrec::lightgcn_propagate", _lightgcn_backward, setup_context=_lightgcn_setup)
torch.library.register_autograd("fastrec::topk_scores", _topk_backward, setup_context=_topk_setup)


# -------------------------------------------------------------------------------------------- checks


def _check_csr(prefix: str, indptr: Any, indices: Any, num_rows: int | None, num_cols: int,
               validate: bool = True) -> None:
    """CSR structure checks; the value checks (monotone indptr, index range) run on the host only where
    the C++ kernel would not do them inside its own pass, and not with validate=False."""
    _checks.tensor(f"{prefix}indptr", indptr, 1, _checks.INDEX_DTYPES)
    _checks.tensor(f"{prefix}indices", indices, 1, _checks.INDEX_DTYPES)
    if indptr.dtype != indices.dtype:
        raise ValueError(f"{prefix}indptr and {prefix}indices must share one dtype, got {indptr.dtype} "
                         f"and {indices.dtype}")
    if indptr.numel() < 1:
        raise ValueError(f"{prefix}indptr must have num_rows + 1 >= 1 entries")
    if num_rows is not None and indptr.numel() != num_rows + 1:
        raise ValueError(f"{prefix}indptr must have {num_rows + 1} entries (num_rows + 1), got {indptr.numel()}")
    if (indptr.device.type == "cpu" and cpu_is_compiled("spmm")) or not _checks.can_read(indptr) or not validate:
        return
    if int(indptr[0]) != 0 or int(indptr[-1]) != indices.numel():
        raise ValueError(f"{prefix}indptr must start at 0 and end at len({prefix}indices)={indices.numel()}")
    if bool((indptr[1:] < indptr[:-1]).any()):
        raise ValueError(f"{prefix}indptr must be non-decreasing")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_cols):
        raise IndexError(f"{prefix}indices holds an index outside [0, {num_cols})")


def spmm(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``A @ dense`` for ``A`` in CSR: indptr ``[R+1]``, indices/values ``[nnz]``, dense ``[C, d]`` -> ``[R, d]``.

    int32 or int64 indices (indptr of the same dtype); dense fp32/fp16/bf16, values any float dtype;
    fp32 accumulation; the output has dense's dtype. Differentiable in ``dense`` (through ``A^T``) and in
    ``values`` when it requires grad. Column indices outside ``[0, C)`` raise IndexError and a malformed
    indptr ValueError; where the host check cannot run on CUDA (torch.compile, CUDA-graph capture) the
    kernel skips such entries, clamps the edge range and raises a device-side assert, as ATen's embedding
    does, so bad input is an error on every device and nothing is read out of bounds.
    """
    _checks.tensor("dense", dense, 2, _checks.FLOAT_DTYPES)
    _checks.tensor("values", values, 1, _checks.FLOAT_DTYPES)
    _check_csr("", indptr, indices, None, dense.shape[0])
    if values.numel() != indices.numel():
        raise ValueError(f"values has {values.numel()} entries but indices has {indices.numel()}")
    _checks.same_device(indptr=indptr, indices=indices, values=values, dense=dense)
    return torch.ops.fastrec.spmm(indptr, indices, values, dense)


def unpack_graph(graph: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(indptr, indices, values, symmetric) of a ``torch.sparse_csr_tensor`` or an ``InteractionGraph``."""
    if isinstance(graph, torch.Tensor):
        if graph.layout != torch.sparse_csr:
            raise TypeError(f"graph must be a torch.sparse_csr_tensor or an InteractionGraph, got {graph.layout}")
        if graph.dim() != 2 or graph.shape[0] != graph.shape[1]:
            raise ValueError(f"graph must be a square 2-D CSR matrix, got shape {tuple(graph.shape)}")
        return graph.crow_indices(), graph.col_indices(), graph.values(), False
    if all(hasattr(graph, a) for a in ("indptr", "indices", "values")):
        return graph.indptr, graph.indices, graph.values, bool(getattr(graph, "is_symmetric", False))
    raise TypeError(f"graph must be a torch.sparse_csr_tensor or an InteractionGraph, got {type(graph).__name__}")


def default_layer_weights(num_layers: int) -> list[float]:
    """LightGCN's uniform mean: ``1 / (L + 1)`` for each of the layers ``0..L``."""
    return [1.0 / (num_layers + 1)] * (num_layers + 1)


def lightgcn_propagate(
    graph: Any,
    emb: torch.Tensor,
    num_layers: int = 3,
    layer_weights: list[float] | None = None,
    symmetric: bool | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """LightGCN propagation: ``sum_{l=0..L} w_l A^l emb`` with the accumulation fused into the SpMM passes.

    Args:
        graph: the normalised adjacency ``[n, n]``: a ``torch.sparse_csr_tensor`` (int32 or int64 indices)
            or a :class:`fastrec.data.InteractionGraph` (anything with ``indptr``/``indices``/``values``).
        emb: ``[n, d]`` node embeddings (users then items for an InteractionGraph), fp32/fp16/bf16.
        num_layers: ``L``; ignored when ``layer_weights`` is given.
        layer_weights: ``L + 1`` weights; default ``1 / (L + 1)`` each (LightGCN's mean).
        symmetric: whether ``A == A^T``. Default: an InteractionGraph says so itself; a CSR tensor is
            treated as non-symmetric, so its transpose is built (once per call, only when ``emb``
            requires grad) for the backward. Pass True for a symmetric CSR tensor to skip that.
        validate: check the CSR values on the host (monotone indptr, column range: syncs on CUDA).
            With False, forward and backward (the transpose included) never sync the host; the CUDA
            kernel then skips bad entries and raises a device-side assert, as ATen's embedding does.

    Returns:
        ``[n, d]`` in ``emb``'s dtype (fp32 accumulation). Differentiable in ``emb``.
    """
    indptr, indices, values, sym = unpack_graph(graph)
    if symmetric is not None:
        sym = bool(symmetric)
    _checks.tensor("emb", emb, 2, _checks.FLOAT_DTYPES)
    _checks.tensor("graph values", values, 1, _checks.FLOAT_DTYPES)
    if layer_weights is None:
        if not isinstance(num_layers, int) or num_layers < 0:
            raise ValueError(f"num_layers must be an int >= 0, got {num_layers!r}")
        layer_weights = default_layer_weights(num_layers)
    layer_weights = [float(w) for w in layer_weights]
    if not layer_weights:
        raise ValueError("layer_weights must hold num_layers + 1 >= 1 weights")
    n = emb.shape[0]
    if indptr.numel() != n + 1:
        raise ValueError(f"graph has {indptr.numel() - 1} nodes but emb has {n} rows")
    _check_csr("graph ", indptr, indices, n, n, validate)
    _checks.same_device(graph_indptr=indptr, graph_indices=indices, graph_values=values, emb=emb)
    if sym or not (emb.requires_grad and torch.is_grad_enabled()):
        t_indptr, t_indices, t_values = indptr, indices, values
    else:
        t_indptr, t_indices, t_values = csr_transpose(indptr, indices, values, n)
    return torch.ops.fastrec.lightgcn_propagate(
        indptr, indices, values, t_indptr, t_indices, t_values, emb, layer_weights
    )


def _unpack_exclude(exclude: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if exclude is None:
        return None, None
    if isinstance(exclude, torch.Tensor):
        if exclude.layout != torch.sparse_csr:
            raise TypeError("exclude must be a CSR (indptr, indices) pair or a torch.sparse_csr_tensor")
        return exclude.crow_indices(), exclude.col_indices()
    if isinstance(exclude, (tuple, list)) and len(exclude) == 2:
        return exclude[0], exclude[1]
    raise TypeError(f"exclude must be a CSR (indptr, indices) pair or a torch.sparse_csr_tensor, got "
                    f"{type(exclude).__name__}")


def topk_scores(
    queries: torch.Tensor, items: torch.Tensor, k: int, exclude: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` items per query by inner product, with per-query excluded items (e.g. seen items).

    Args:
        queries: ``[U, d]`` user vectors; items: ``[I, d]`` item vectors (fp32/fp16/bf16, same dtype).
        k: ``0 <= k <= I``.
        exclude: CSR ``(indptr [U+1], indices)`` of item ids to mask per query (int32 or int64), or a
            ``torch.sparse_csr_tensor`` of shape ``[U, I]``; duplicates and any order allowed.

    Returns:
        ``(scores fp32 [U, k], ids int64 [U, k])`` ranked by score, equal scores by lower item id.
        Excluded items score ``-inf`` and appear only when fewer than ``k`` items remain. Memory is
        bounded by one users x items tile per thread, never ``U x I``. Scores are differentiable.
        On CUDA the Triton kernels (kernels/topk.py) run for ``k <= 128``: fp32 tf32x3 tensor-core dots by
        default (``FASTREC_TOPK_DOT=ieee`` for CUDA-core fp32, ``FASTREC_TF32=1`` for one TF32 dot), native
        tensor-core dots for fp16/bf16, fp32 scores; from 65,536 items a sampled score threshold per query and
        one candidate scan, else (and as its fallback) a scan with a running top-k per query. Larger ``k``
        runs the reference (a matmul and a stable sort per 1024 queries).
    """
    _checks.tensor("queries", queries, 2, _checks.FLOAT_DTYPES)
    _checks.tensor("items", items, 2, _checks.FLOAT_DTYPES)
    _checks.same_dtype(queries=queries, items=items)
    _checks.same_device(queries=queries, items=items)
    if queries.shape[1] != items.shape[1]:
        raise ValueError(f"queries has d={queries.shape[1]} but items has d={items.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0 or k > items.shape[0]:
        raise ValueError(f"k must be an int in [0, {items.shape[0]}] (the item count), got {k!r}")
    ex_indptr, ex_indices = _unpack_exclude(exclude)
    if ex_indptr is not None:
        _check_csr("exclude_", ex_indptr, ex_indices, queries.shape[0], items.shape[0])
        _checks.same_device(queries=queries, exclude_indptr=ex_indptr, exclude_indices=ex_indices)
    _checks.finite("queries", queries)
    _checks.finite("items", items)
    return torch.ops.fastrec.topk_scores(queries, items, k, ex_indptr, ex_indices)
