"""fastrec ops: `torch.ops.fastrec.*` custom ops behind checked Python entry points.

One module per op family; `backends()` reports which kernel runs each op.
"""

from fastrec.ops._library import backends
from fastrec.ops.graph import lightgcn_propagate, spmm, topk_scores
from fastrec.ops.quantize import nearest_code, residual_encode

__all__ = ["backends", "nearest_code", "residual_encode"]
__all__ += ["spmm", "lightgcn_propagate", "topk_scores"]
