"""LC-Rec's uniform semantic mapping as an op: balanced assignment of rows to codes by Sinkhorn-Knopp.

    codes = fastrec.ops.sinkhorn_assign(distances, epsilon=0.003, iters=50)   # distances [N, K]

The C++ kernel keeps only the two scaling vectors in float64 and stores exp(-d / epsilon) only when it
fits a memory budget (else it recomputes it row by row), so it is safe on any number of rows. On CUDA the
Triton kernel (kernels/sinkhorn.py) runs the same algebra as batched device code: it recomputes
exp(-d / epsilon) in every pass (never an N x K float64 matrix), reduces the column sums in a fixed order
and never syncs the host, so it runs under CUDA-graph capture. Without Triton the reference runs there.
"""

from __future__ import annotations

import math

import torch

from fastrec import reference
from fastrec.ops import _checks
from fastrec.ops._library import HAS_TRITON, define


def _triton_impl():
    if not HAS_TRITON:
        return None
    from fastrec.kernels import sinkhorn as kernels

    return kernels.sinkhorn_assign


define("sinkhorn_assign", "(Tensor distances, float epsilon, int iters) -> Tensor", reference.sinkhorn_assign,
       _triton_impl())


@torch.library.register_fake("fastrec::sinkhorn_assign")
def _(distances, epsilon, iters):
    return distances.new_empty(distances.shape[0], dtype=torch.int64)


# The codes are piecewise constant in the distances: no gradient flows.
torch.library.register_autograd("fastrec::sinkhorn_assign", lambda ctx, grad: (None, None, None),
                                setup_context=lambda ctx, inputs, output: None)


def sinkhorn_assign(distances: torch.Tensor, epsilon: float = 0.003, iters: int = 50,
                    validate: bool = True) -> torch.Tensor:
    """Code of every row under LC-Rec's uniform mapping: distances [N, K] (fp32/fp16/bf16/fp64) -> int64 [N].

    Distances are rescaled to [-1, 1] over the whole matrix, turned into exp(-d / epsilon), and rows and
    columns are normalised alternately `iters` times in float64 so each code gets about N / K rows; each
    row takes its argmax (ties -> lowest index). N = 0 gives an empty result.

    validate: check that distances are finite (on CUDA a host sync); False skips it, so the call never
    waits on the device (NaN then gives some valid code, never an out-of-bounds access). Skipped under
    torch.compile and CUDA-graph capture; the CPU kernel checks finiteness inside its own pass anyway.
    """
    _checks.tensor("distances", distances, 2, _checks.FLOAT_DTYPES + (torch.float64,))
    if distances.shape[1] == 0:
        raise ValueError("distances has no codes (K = 0)")
    if not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon) or epsilon <= 0:
        raise ValueError(f"epsilon must be a positive number, got {epsilon!r}")
    if not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be a non-negative int, got {iters!r}")
    if validate:
        _checks.finite("distances", distances)
    return torch.ops.fastrec.sinkhorn_assign(distances, float(epsilon), iters)
