"""SASRec (Kang and McAuley, 2018): causal self-attention over the item sequence, next-item prediction.

The item embedding is pluggable: any module mapping ids [B, L] -> [B, L, d] with `table()` -> [I, d]
(`fastrec.nn.IDEmbedding` for plain IDs, `fastrec.nn.SemanticFusionEmbedding` for KIRec). Ids are
1..num_items with 0 the padding id; sequences are left-padded (the last column is the latest item).
Scores are dot products with the same item table (tied input/output embeddings), trained with
cross-entropy over the full item set.
"""

from __future__ import annotations

import torch
from torch import nn

from fastrec.nn.fusion import IDEmbedding
from fastrec.nn.sequential import add_transformer_stack

__all__ = ["SASRec"]


class SASRec(nn.Module):
    """SASRec with a pluggable item embedding.

    Args:
        num_items: catalogue size including the padding row 0 (so real items are 1..num_items-1).
        d: hidden size (64). num_blocks: self-attention blocks (2). num_heads: heads (1).
        max_len: maximum sequence length (50). dropout: dropout rate (0.2).
        item_embedding: the item embedding module; default `IDEmbedding(num_items, d)`.
    """

    def __init__(self, num_items: int, d: int = 64, num_blocks: int = 2, num_heads: int = 1, max_len: int = 50,
                 dropout: float = 0.2, item_embedding: nn.Module | None = None) -> None:
        super().__init__()
        if num_items < 2:
            raise ValueError(f"num_items must be >= 2 (row 0 is padding), got {num_items}")
        self.num_items, self.d, self.max_len = num_items, d, max_len
        self.item_embedding = item_embedding if item_embedding is not None else IDEmbedding(num_items, d)
        add_transformer_stack(self, d, num_heads, num_blocks, max_len, dropout)
        self.register_buffer("causal", torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), 1), persistent=False)

    def item_table(self) -> torch.Tensor:
        """[num_items, d] embedding of every item (the output layer)."""
        return self.item_embedding.table()

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """Hidden state at every position, [B, L, d]; seqs [B, L] left-padded with 0, L <= max_len."""
        if seqs.dim() != 2 or seqs.shape[1] > self.max_len:
            raise ValueError(f"seqs must be [B, L] with L <= {self.max_len}, got {tuple(seqs.shape)}")
        B, L = seqs.shape
        pad = seqs == 0
        x = self.item_embedding(seqs) + self.position.weight[self.max_len - L:][None]
        x = self.drop(self.norm(x)) * (~pad)[..., None]
        # padded keys are hidden from every query but itself: a padded query then attends to itself only
        # (finite, and never to the future), real queries never see padding
        eye = torch.eye(L, dtype=torch.bool, device=seqs.device)
        mask = (self.causal[:L, :L][None] | (pad[:, None, :] & ~eye)).float() * -1e9
        heads = self.blocks.layers[0].self_attn.num_heads
        mask = mask.repeat_interleave(heads, dim=0)
        return self.blocks(x, mask=mask)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """User representation: the hidden state at the last position, [B, d]."""
        return self.encode(seqs)[:, -1]

    def loss(self, seqs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the full item set at every non-padded position.

        seqs, targets [B, L]: targets[b, t] is the item after seqs[b, :t+1] (0 where there is none).
        """
        h = self.encode(seqs)
        keep = targets != 0
        logits = h[keep] @ self.item_table().t()
        logits[:, 0] = float("-inf")  # never predict padding
        return nn.functional.cross_entropy(logits, targets[keep])

    @torch.no_grad()
    def scores(self, seqs: torch.Tensor) -> torch.Tensor:
        """Scores of every item for every sequence, [B, num_items] (column 0 is -inf)."""
        s = self(seqs) @ self.item_table().t()
        s[:, 0] = float("-inf")
        return s
