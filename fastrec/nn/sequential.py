"""GRU4Rec and BERT4Rec beside SASRec: three sequential backbones with the same pluggable item embedding.

Every backbone takes any item embedding with `table()` (`IDEmbedding`, `SemanticFusionEmbedding`,
`SparseOptimEmbedding`), reads left-padded id sequences [B, L] (0 = padding, last column = latest item)
and exposes the same interface, so KIRec's fusion drops into each unchanged:
    encode(seqs) -> [B, L, d]; forward(seqs) -> user vectors [B, d]; item_table() -> [num_items, d];
    loss(seqs, targets) -> scalar (cross-entropy over the full item set); scores(seqs) -> [B, num_items].

GRU4Rec (Hidasi et al., 2016; RecBole's full-softmax form): LayerNorm and dropout on the item rows, a GRU
over the real items of each sequence (packed, so left padding never enters the state), a Linear back to the
embedding space.
BERT4Rec (Sun et al., 2019): a bidirectional Transformer trained by the cloze task: a fraction
`mask_prob` of each sequence's items is replaced by a learned [mask] vector (at least one per sequence)
and predicted; `loss(seqs)` draws the masks itself (targets unused). At inference a [mask] is appended
after the history and its hidden state is the user vector.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from fastrec.nn.fusion import IDEmbedding

__all__ = ["BERT4Rec", "GRU4Rec", "full_softmax_loss"]


def full_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over items 1..I-1 of hidden [..., d] at positions where targets != 0 (padding id 0)."""
    keep = targets != 0
    logits = hidden[keep] @ table.t()
    logits[:, 0] = float("-inf")  # never predict padding
    return nn.functional.cross_entropy(logits, targets[keep])


def add_transformer_stack(module: nn.Module, d: int, num_heads: int, num_blocks: int, max_len: int,
                          dropout: float) -> None:
    """The Transformer parts SASRec and BERT4Rec share, as attributes of `module` (so their state-dict names
    stay `position`, `norm`, `blocks`): learned positions (std 0.02), the input LayerNorm and dropout, and
    `num_blocks` post-norm GELU encoder layers of width 4d."""
    module.position = nn.Embedding(max_len, d)
    nn.init.normal_(module.position.weight, std=0.02)
    module.norm = nn.LayerNorm(d)
    module.drop = nn.Dropout(dropout)
    layer = nn.TransformerEncoderLayer(d, num_heads, 4 * d, dropout, activation="gelu", batch_first=True)
    module.blocks = nn.TransformerEncoder(layer, num_blocks, enable_nested_tensor=False)


class _Backbone(nn.Module):
    def __init__(self, num_items: int, d: int, max_len: int, item_embedding: nn.Module | None) -> None:
        super().__init__()
        if num_items < 2:
            raise ValueError(f"num_items must be >= 2 (row 0 is padding), got {num_items}")
        self.num_items, self.d, self.max_len = num_items, d, max_len
        self.item_embedding = item_embedding if item_embedding is not None else IDEmbedding(num_items, d)

    def item_table(self) -> torch.Tensor:
        """[num_items, d] embedding of every item (the output layer, tied with the input)."""
        return self.item_embedding.table()

    def _check(self, seqs: torch.Tensor, room: int = 0) -> None:
        if seqs.dim() != 2 or seqs.shape[1] + room > self.max_len:
            raise ValueError(f"seqs must be [B, L] with L <= {self.max_len - room}, got {tuple(seqs.shape)}")

    @torch.no_grad()
    def scores(self, seqs: torch.Tensor) -> torch.Tensor:
        """Scores of every item for every sequence, [B, num_items] (column 0 is -inf)."""
        s = self(seqs) @ self.item_table().t()
        s[:, 0] = float("-inf")
        return s


class GRU4Rec(_Backbone):
    """GRU4Rec with a pluggable item embedding (num_items includes the padding row 0).

    The item rows enter the GRU through a LayerNorm (as they enter SASRec's and BERT4Rec's blocks): the
    tied item table starts at std 0.02, and without it the GRU's input term is ~100x smaller than its
    biases, so the hidden state barely depends on the items and IDs-only training stalls near the
    popularity loss. A checkpoint saved without the norm loads with the norm off (and a warning).
    """

    def __init__(self, num_items: int, d: int = 64, num_layers: int = 1, max_len: int = 50, dropout: float = 0.2,
                 item_embedding: nn.Module | None = None) -> None:
        super().__init__(num_items, d, max_len, item_embedding)
        self.norm: nn.Module = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(d, d, num_layers, batch_first=True)
        self.dense = nn.Linear(d, d)
        self.register_load_state_dict_pre_hook(self._without_norm)

    def _without_norm(self, module, state_dict, prefix, *args) -> None:
        # checkpoints from before the input norm: keep their function (no norm) rather than fail or change it
        if prefix + "norm.weight" not in state_dict and any(k.startswith(prefix + "gru.") for k in state_dict):
            warnings.warn("this GRU4Rec checkpoint has no input LayerNorm (saved before GRU4Rec had one): "
                          "loading it with the norm off, as it was trained", stacklevel=2)
            self.norm = nn.Identity()

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """Hidden state after each position, [B, L, d] (zero at padding positions)."""
        self._check(seqs)
        B, L = seqs.shape
        lengths = (seqs != 0).sum(1)
        # left-padded -> left-aligned, so that packing skips the padding entirely
        shift = (torch.arange(L, device=seqs.device)[None, :] + (L - lengths)[:, None]) % L
        aligned = seqs.gather(1, shift)
        x = self.drop(self.norm(self.item_embedding(aligned)))
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.clamp_min(1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        h, _ = self.gru(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=L)
        h = self.dense(h)
        back = (torch.arange(L, device=seqs.device)[None, :] - (L - lengths)[:, None]) % L
        return h.gather(1, back[..., None].expand(-1, -1, h.shape[-1])) * (seqs != 0)[..., None]

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """User representation: the state after the latest item, [B, d]."""
        return self.encode(seqs)[:, -1]

    def loss(self, seqs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Next-item cross-entropy at every non-padded position (targets[b, t] follows seqs[b, :t+1])."""
        return full_softmax_loss(self.encode(seqs), targets, self.item_table())


class BERT4Rec(_Backbone):
    """BERT4Rec with a pluggable item embedding; the [mask] token is a learned vector, not an item row.

    Args:
        num_items: catalogue size including the padding row 0. d, num_blocks (2), num_heads (2), max_len (50),
        dropout (0.2): the Transformer. mask_prob: cloze masking rate (0.2, RecBole's default).
    """

    def __init__(self, num_items: int, d: int = 64, num_blocks: int = 2, num_heads: int = 2, max_len: int = 50,
                 dropout: float = 0.2, mask_prob: float = 0.2, item_embedding: nn.Module | None = None) -> None:
        super().__init__(num_items, d, max_len, item_embedding)
        if not 0 < mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
        self.mask_prob = mask_prob
        self.mask_id = num_items  # an id past the catalogue: replaced by `mask_embedding`
        self.mask_embedding = nn.Parameter(torch.randn(d) * 0.02)
        add_transformer_stack(self, d, num_heads, num_blocks, max_len, dropout)

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """Bidirectional hidden states [B, L, d]; ids equal to `mask_id` are [mask] tokens."""
        self._check(seqs)
        B, L = seqs.shape
        pad, masked = seqs == 0, seqs == self.mask_id
        x = self.item_embedding(seqs.masked_fill(masked, 0))
        x = torch.where(masked[..., None], self.mask_embedding.to(x.dtype), x)
        x = x + self.position.weight[self.max_len - L:][None]
        x = self.drop(self.norm(x)) * (~pad)[..., None]
        # padded keys are hidden from every query but itself (a padded query then stays finite)
        eye = torch.eye(L, dtype=torch.bool, device=seqs.device)
        mask = (pad[:, None, :] & ~eye).float() * -1e9
        heads = self.blocks.layers[0].self_attn.num_heads
        return self.blocks(x, mask=mask.repeat_interleave(heads, dim=0))

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """User vector: the hidden state of a [mask] appended after the history, [B, d]."""
        self._check(seqs)
        if seqs.numel() and not torch.compiler.is_compiling() and int(seqs.max()) >= self.mask_id:
            raise IndexError(f"item ids out of range: the catalogue is [0, {self.num_items})")
        if seqs.shape[1] + 1 > self.max_len:
            seqs = seqs[:, 1:]
        mask_col = torch.full((seqs.shape[0], 1), self.mask_id, dtype=seqs.dtype, device=seqs.device)
        return self.encode(torch.cat([seqs, mask_col], 1))[:, -1]

    def cloze(self, seqs: torch.Tensor, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked inputs, targets): each real item masked with prob mask_prob, the latest one when none is."""
        real = seqs != 0
        draw = torch.rand(seqs.shape, generator=generator, device="cpu").to(seqs.device) < self.mask_prob
        draw &= real
        none = ~draw.any(1)
        draw[:, -1] |= none & real[:, -1]
        return seqs.masked_fill(draw, self.mask_id), seqs * draw

    def loss(self, seqs: torch.Tensor, targets: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Cloze cross-entropy over the full item set at the masked positions (`targets` is unused: the
        items of `seqs` are the targets)."""
        inputs, labels = self.cloze(seqs, generator)
        return full_softmax_loss(self.encode(inputs), labels, self.item_table())
