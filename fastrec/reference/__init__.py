"""Plain-PyTorch versions of every fastrec op: clear, not fast. The test oracle and the CPU fallback.

Imports nothing of fastrec.
"""

from fastrec.reference.fusion import semantic_fusion, semantic_fusion_lookup, semantic_fusion_weight_grad
from fastrec.reference.quantize import nearest_code, residual_encode

__all__ = ["nearest_code", "residual_encode"]
__all__ += ["semantic_fusion", "semantic_fusion_lookup", "semantic_fusion_weight_grad"]
