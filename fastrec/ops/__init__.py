"""fastrec ops: `torch.ops.fastrec.*` custom ops behind checked Python entry points.

One module per op family; `backends()` reports which kernel runs each op.
"""

from fastrec.ops._library import backends
from fastrec.ops.collab import collab_inputs_embeds, splice_collab_rows, splice_collab_tokens
from fastrec.ops.embedding_optim import embedding_sparse_update
from fastrec.ops.fusion import semantic_fusion_lookup, semantic_fusion_weight_grad
from fastrec.ops.graph import lightgcn_propagate, spmm, topk_scores
from fastrec.ops.quantize import nearest_code, residual_encode
from fastrec.ops.sinkhorn import sinkhorn_assign
from fastrec.ops.trie import build_trie, check_trie, trie_mask

__all__ = [
    "backends",
    # residual quantization and LC-Rec's uniform mapping
    "nearest_code", "residual_encode", "sinkhorn_assign",
    # collaborative graph and full ranking
    "spmm", "lightgcn_propagate", "topk_scores",
    # collaborative-token splicing
    "splice_collab_tokens", "splice_collab_rows", "collab_inputs_embeds",
    # semantic fusion lookup
    "semantic_fusion_lookup", "semantic_fusion_weight_grad",
    # fused sparse optimizer step of embedding tables
    "embedding_sparse_update",
    # trie-constrained generation
    "build_trie", "check_trie", "trie_mask",
]
