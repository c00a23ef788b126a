"""fastrec ops: `torch.ops.fastrec.*` custom ops behind checked Python entry points.

One module per op family; `backends()` reports which kernel runs each op.
"""

from fastrec.ops._library import backends
from fastrec.ops.fusion import semantic_fusion_lookup, semantic_fusion_weight_grad
from fastrec.ops.quantize import nearest_code, residual_encode

__all__ = ["backends", "nearest_code", "residual_encode"]
__all__ += ["semantic_fusion_lookup", "semantic_fusion_weight_grad"]
