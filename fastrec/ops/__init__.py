"""fastrec ops: `torch.ops.fastrec.*` custom ops behind checked Python entry points.

One module per op family; `backends()` reports which kernel runs each op.
"""

from fastrec.ops._library import backends
from fastrec.ops.collab import collab_inputs_embeds, splice_collab_rows, splice_collab_tokens
from fastrec.ops.quantize import nearest_code, residual_encode

__all__ = ["backends", "collab_inputs_embeds", "nearest_code", "residual_encode", "splice_collab_rows",
           "splice_collab_tokens"]
