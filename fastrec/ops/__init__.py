"""fastrec ops: `torch.ops.fastrec.*` custom ops behind checked Python entry points.

One module per op family; `backends()` reports which kernel runs each op.
"""

from fastrec.ops._library import backends
from fastrec.ops.quantize import nearest_code, residual_encode
from fastrec.ops.sinkhorn import sinkhorn_assign
from fastrec.ops.trie import build_trie, check_trie, trie_mask

__all__ = ["backends", "nearest_code", "residual_encode"]
__all__ += ["sinkhorn_assign", "build_trie", "check_trie", "trie_mask"]
