"""Plain-PyTorch versions of every fastrec op: clear, not fast. The test oracle and the CPU fallback.

Imports nothing of fastrec.
"""

from fastrec.reference.graph import lightgcn_propagate, spmm, topk_scores
from fastrec.reference.quantize import nearest_code, residual_encode

__all__ = ["nearest_code", "residual_encode"]
__all__ += ["spmm", "lightgcn_propagate", "topk_scores"]
