"""Plain-PyTorch versions of every fastrec op: clear, not fast. The test oracle and the CPU fallback.

Imports nothing of fastrec.
"""

from fastrec.reference.collab import collab_inputs_embeds, splice_collab_tokens
from fastrec.reference.graph import lightgcn_propagate, spmm, topk_scores
from fastrec.reference.quantize import nearest_code, residual_encode
from fastrec.reference.sinkhorn import sinkhorn_assign
from fastrec.reference.trie import trie_mask

__all__ = [
    "nearest_code", "residual_encode",
    "spmm", "lightgcn_propagate", "topk_scores",
    "splice_collab_tokens", "collab_inputs_embeds",
]
__all__ = ["nearest_code", "residual_encode"]
__all__ += ["sinkhorn_assign", "trie_mask"]
