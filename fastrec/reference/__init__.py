"""Plain-PyTorch versions of every fastrec op: clear, not fast. The test oracle and the CPU fallback.

Imports nothing of fastrec.
"""

from fastrec.reference.collab import collab_inputs_embeds, splice_collab_tokens
from fastrec.reference.embedding_optim import embedding_sparse_update
from fastrec.reference.fusion import semantic_fusion, semantic_fusion_lookup, semantic_fusion_weight_grad
from fastrec.reference.graph import graph_partition, lightgcn_propagate, spmm, topk_scores
from fastrec.reference.quantize import nearest_code, residual_encode
from fastrec.reference.sinkhorn import sinkhorn_assign
from fastrec.reference.trie import trie_mask

__all__ = [
    "nearest_code", "residual_encode", "sinkhorn_assign",
    "spmm", "lightgcn_propagate", "topk_scores", "graph_partition",
    "splice_collab_tokens", "collab_inputs_embeds",
    "semantic_fusion", "semantic_fusion_lookup", "semantic_fusion_weight_grad",
    "embedding_sparse_update",
    "trie_mask",
]
