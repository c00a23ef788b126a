"""Plain-PyTorch versions of every fastrec op: clear, not fast. The test oracle and the CPU fallback.

Imports nothing of fastrec.
"""

from fastrec.reference.collab import collab_inputs_embeds, splice_collab_tokens
from fastrec.reference.quantize import nearest_code, residual_encode

__all__ = ["collab_inputs_embeds", "nearest_code", "residual_encode", "splice_collab_tokens"]
