"""Residual quantization ops: nearest-code search and greedy residual encoding (LC-Rec's RQ-VAE).

    index, sqdist = fastrec.ops.nearest_code(x, codebook)          # x [N, D], codebook [K, D]
    codes, quantized = fastrec.ops.residual_encode(x, codebooks)   # codebooks [L, K, D]

Both are `torch.ops.fastrec.*` custom ops with fake kernels and autograd; the C++ CPU kernel and, on CUDA,
the Triton kernel (kernels/quantize.py: a TF32 tensor-core distance GEMM, then an exact fp32 re-rank of the
candidates its error bound leaves, all levels in one launch) never materialise the N x K distance matrix and
return the codes of exact fp32 search; ties go to the lowest code index.
"""

from __future__ import annotations

import torch

from fastrec import reference
from fastrec.ops import _checks
from fastrec.ops._library import HAS_TRITON, cpu_is_compiled, define


def _triton(name: str):
    if not HAS_TRITON:
        return None
    from fastrec.kernels import quantize as kernels

    return getattr(kernels, name)


define("nearest_code", "(Tensor x, Tensor codebook) -> (Tensor, Tensor)",
       reference.nearest_code, _triton("nearest_code"))
define("residual_encode", "(Tensor x, Tensor codebooks) -> (Tensor, Tensor)",
       reference.residual_encode, _triton("residual_encode"))


@torch.library.register_fake("fastrec::nearest_code")
def _(x, codebook):
    n = x.shape[0]
    return x.new_empty(n, dtype=torch.int64), x.new_empty(n, dtype=torch.float32)


@torch.library.register_fake("fastrec::residual_encode")
def _(x, codebooks):
    # the kernels return contiguous tensors whatever x's strides
    return x.new_empty(x.shape[0], codebooks.shape[0], dtype=torch.int64), x.new_empty(x.shape)


# Autograd. The indices are piecewise constant; the distance is differentiable in x and the codebook
# (d/dx ||x - c||^2 = 2 (x - c)); quantized is a sum of gathered code rows, so its gradient flows to
# the codebooks only (the straight-through estimator lives in fastrec.nn.ResidualQuantizer).
def _nearest_setup(ctx, inputs, output):
    x, codebook = inputs
    ctx.save_for_backward(x, codebook, output[0])


def _nearest_backward(ctx, grad_index, grad_sqdist):
    x, codebook, index = ctx.saved_tensors
    if grad_sqdist is None:
        return None, None
    diff = 2.0 * (x.float() - codebook[index].float()) * grad_sqdist[:, None].float()
    grad_x = diff.to(x.dtype) if ctx.needs_input_grad[0] else None
    grad_codebook = None
    if ctx.needs_input_grad[1]:
        grad_codebook = torch.zeros(codebook.shape, dtype=torch.float32, device=codebook.device)
        grad_codebook = grad_codebook.index_add(0, index, -diff).to(codebook.dtype)
    return grad_x, grad_codebook


def _residual_setup(ctx, inputs, output):
    x, codebooks = inputs
    ctx.codebook_shape, ctx.codebook_dtype = codebooks.shape, codebooks.dtype
    ctx.save_for_backward(output[0])


def _residual_backward(ctx, grad_codes, grad_quantized):
    (codes,) = ctx.saved_tensors
    if grad_quantized is None or not ctx.needs_input_grad[1]:
        return None, None
    levels, k, d = ctx.codebook_shape
    # level l, code k sits at row l * K + k of the flattened codebooks
    flat = (codes + torch.arange(levels, device=codes.device) * k).reshape(-1)
    grads = grad_quantized.float().repeat_interleave(levels, dim=0)
    grad = torch.zeros(levels * k, d, dtype=torch.float32, device=codes.device).index_add(0, flat, grads)
    return None, grad.view(levels, k, d).to(ctx.codebook_dtype)


torch.library.register_autograd("fastrec::nearest_code", _nearest_backward, setup_context=_nearest_setup)
torch.library.register_autograd("fastrec::residual_encode", _residual_backward, setup_context=_residual_setup)


def _check(x: torch.Tensor, codebooks: torch.Tensor, name: str, rank: int) -> None:
    _checks.tensor("x", x, 2, _checks.FLOAT_DTYPES)
    _checks.tensor(name, codebooks, rank, _checks.FLOAT_DTYPES)
    _checks.same_device(x=x, **{name: codebooks})
    _checks.same_dtype(x=x, **{name: codebooks})
    if codebooks.shape[-1] != x.shape[1]:
        raise ValueError(f"x has D={x.shape[1]} but {name} has D={codebooks.shape[-1]}")
    if codebooks.shape[-2] == 0:
        raise ValueError(f"{name} has no codes (K = 0)")
    if rank == 3 and codebooks.shape[0] == 0:
        raise ValueError(f"{name} has no levels (L = 0)")
    _checks.finite(name, codebooks)
    if not (x.device.type == "cpu" and cpu_is_compiled(name)):  # the C++ kernel checks x in its pass
        _checks.finite("x", x)


def nearest_code(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code of every row: x [N, D], codebook [K, D] -> (index int64 [N], sqdist fp32 [N]).

    fp32/fp16/bf16 inputs (same dtype), fp32 accumulation; ties go to the lowest index; N = 0 gives
    empty outputs. `sqdist` is the exact ||x - codebook[index]||^2 and is differentiable.

    Defined results, the same in every backend: D = 0 gives code 0 at distance 0 (every distance is 0).
    A NaN/Inf in x raises ValueError here wherever the values may be read (always on the CPU, whose
    kernel checks inside its pass; on CUDA unless compiling or capturing a CUDA graph); where they are
    not, a NaN row gets code 0 and a NaN distance (Triton and the reference alike), never an
    out-of-range index.
    """
    _check(x, codebook, "codebook", 2)
    return torch.ops.fastrec.nearest_code(x, codebook)


def residual_encode(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy residual quantization over all levels in one call.

    x [N, D], codebooks [L, K, D] -> (codes int64 [N, L], quantized [N, D] in x's dtype), where
    quantized is the sum of the chosen codes and level l searches the residual left by levels < l.
    """
    _check(x, codebooks, "codebooks", 3)
    return torch.ops.fastrec.residual_encode(x, codebooks)
