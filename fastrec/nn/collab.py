"""SeLLa-Rec's hybrid projection and the token embedding that splices collaborative rows into prompts.

    proj = HybridProjection(hidden_size=2048, user_dim=256, item_dim=256, warm_dim=2048)
    emb = CollabTokenEmbedding(llm.get_input_embeddings(), placeholder_ids, ["user", "item", "warm"], proj)
    users, items = mf()  # fastrec.nn.MF
    emb.set_tables(user=users, item=items, warm=item_text_vectors)
    with emb.use({"user": user_ids, "item": item_ids, "warm": item_ids}):
        embeds = emb(input_ids)       # one fused splice, no per-sample loop
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from fastrec.ops import collab as ops

KINDS = ("user", "item", "warm")


def _mlp(d_in: int, mid: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, mid), nn.GELU(), nn.Linear(mid, d_out))


class GatedProjection(nn.Module):
    """The gated mixture-of-experts projection: softmax(gate(x)) weights `experts` MLPs d_in -> mid -> d_out."""

    def __init__(self, d_in: int, mid: int, d_out: int, experts: int = 4) -> None:
        super().__init__()
        if experts < 1:
            raise ValueError(f"experts must be >= 1, got {experts}")
        self.experts = nn.ModuleList(_mlp(d_in, mid, d_out) for _ in range(experts))
        self.gate = nn.Linear(d_in, experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.gate(x), dim=-1)  # [N, E]
        outs = torch.stack([e(x) for e in self.experts], dim=-1)  # [N, H, E]
        return (outs * weights.unsqueeze(-2)).sum(-1)


class HybridProjection(nn.Module):
    """Per-token-type projections into the LLM's embedding space (SeLLa-Rec).

    user, item: Linear(d -> mid) -> GELU -> Linear(mid -> H) (or a 4-expert gated mixture of those when
    ``moe=True``); warm: Linear(H_warm -> H). Set ``warm_dim=0`` to drop the warm projection.
    """

    def __init__(self, hidden_size: int, user_dim: int = 256, item_dim: int = 256, warm_dim: int | None = None,
                 mid: int = 1024, moe: bool = False, experts: int = 4) -> None:
        super().__init__()
        for name, v in (("hidden_size", hidden_size), ("user_dim", user_dim), ("item_dim", item_dim), ("mid", mid)):
            if v <= 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        self.hidden_size = hidden_size
        self.moe = moe
        self.user = GatedProjection(user_dim, mid, hidden_size, experts) if moe else _mlp(user_dim, mid, hidden_size)
        self.item = GatedProjection(item_dim, mid, hidden_size, experts) if moe else _mlp(item_dim, mid, hidden_size)
        warm_dim = hidden_size if warm_dim is None else warm_dim
        self.warm = nn.Linear(warm_dim, hidden_size) if warm_dim > 0 else None

    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in KINDS if getattr(self, k) is not None)

    def in_dim(self, kind: str) -> int:
        m = self._module(kind)
        return m.in_features if isinstance(m, nn.Linear) else (m.gate.in_features if self.moe else m[0].in_features)

    def _module(self, kind: str) -> nn.Module:
        if kind not in KINDS or getattr(self, kind) is None:
            raise ValueError(f"unknown projection kind {kind!r}; this projection has {self.kinds()}")
        return getattr(self, kind)

    def forward(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        """Project rows x [N, d_kind] of one token type to [N, H]."""
        m = self._module(kind)
        w = next(m.parameters())
        if x.dtype != w.dtype or x.device != w.device:
            raise ValueError(f"{kind} rows are {x.dtype} on {x.device} but the {kind} projection is "
                             f"{w.dtype} on {w.device}")
        if x.shape[-1] != self.in_dim(kind):
            raise ValueError(f"{kind} rows have d={x.shape[-1]} but the {kind} projection takes {self.in_dim(kind)}")
        return m(x)

    def weights(self, kind: str) -> tuple[torch.Tensor, ...]:
        """(W, b) or (W1, b1, W2, b2) of a plain projection, as fastrec.ops.collab_inputs_embeds takes them."""
        m = self._module(kind)
        if isinstance(m, nn.Linear):
            return (m.weight, m.bias)
        if isinstance(m, nn.Sequential):
            return (m[0].weight, m[0].bias, m[2].weight, m[2].bias)
        raise ValueError(f"the {kind} projection is a gated mixture; it has no single weight tuple")


Collab = Mapping[str, torch.Tensor]


class CollabTokenEmbedding(nn.Module):
    """Drop-in for an LLM's input embedding that fills placeholder tokens with projected collaborative rows.

    ``slots`` names the kind ("user", "item", "warm") of each placeholder id. The rows for a call are
    given with :meth:`use` as ``{kind or token: tensor}``: int ids [N_s] (rows of the table set with
    :meth:`set_tables`) or float rows [N_s, d] (projected directly), one per occurrence in row-major order.
    Without rows, prompts must hold no placeholder (else a ValueError).
    """

    def __init__(self, embedding: nn.Embedding, placeholder_ids: Sequence[int], slots: Sequence[str],
                 projection: HybridProjection, tokens: Sequence[str] | None = None) -> None:
        super().__init__()
        if len(placeholder_ids) != len(slots):
            raise ValueError(f"{len(placeholder_ids)} placeholder ids but {len(slots)} slot kinds")
        for kind in slots:
            projection._module(kind)
        self.embedding = embedding
        self.projection = projection
        self.slots = list(slots)
        self.tokens = list(tokens) if tokens is not None else list(slots)
        self.register_buffer("placeholder_ids", torch.tensor(list(placeholder_ids), dtype=torch.int64),
                             persistent=False)
        self.tables: dict[str, torch.Tensor] = {}
        self._collab: Collab | None = None
        self._once = False

    # nn.Embedding look-alike, for code that inspects the input embeddings
    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    @property
    def num_embeddings(self) -> int:
        return self.embedding.weight.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.embedding.weight.shape[1]

    @property
    def padding_idx(self) -> int | None:
        return getattr(self.embedding, "padding_idx", None)

    def set_tables(self, **tables: torch.Tensor | None) -> None:
        """Collaborative tables by kind (e.g. user=[U, d], item=[I, d], warm=[I, H_warm]); None removes one."""
        for kind, t in tables.items():
            if kind not in KINDS:
                raise ValueError(f"unknown table kind {kind!r}; choose from {KINDS}")
            if t is None:
                self.tables.pop(kind, None)
            else:
                if not isinstance(t, torch.Tensor) or t.dim() != 2:
                    raise ValueError(f"table {kind!r} must be a 2-D tensor")
                self.tables[kind] = t

    @contextlib.contextmanager
    def use(self, collab: Collab | None, once: bool = False) -> Iterator[None]:
        """Rows for the forward calls inside the block (``once``: only the first, as in generate's prefill)."""
        previous = (self._collab, self._once)
        self._collab, self._once = collab, once
        try:
            yield
        finally:
            self._collab, self._once = previous

    def _rows(self, collab: Collab, k: int) -> torch.Tensor:
        kind, token = self.slots[k], self.tokens[k]
        if token in collab:
            x = collab[token]
        elif kind in collab:
            x = collab[kind]
        else:
            raise ValueError(f"the collab batch has no rows for {token} (kind {kind!r}); keys: {list(collab)}")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"collab[{kind!r}] must be a tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            if kind not in self.tables:
                raise ValueError(f"collab[{kind!r}] holds ids but no {kind!r} table was set (set_tables)")
            table = self.tables[kind]
            if x.dim() != 1:
                raise ValueError(f"collab[{kind!r}] ids must be 1-D, got shape {tuple(x.shape)}")
            if x.device != table.device:
                raise ValueError(f"collab[{kind!r}] ids are on {x.device} but the {kind} table is on {table.device}")
            if ops._may_sync(x, True):
                ops._check_ids_range(f"collab[{kind!r}]", x, table.shape[0], f"the rows of the {kind} table")
            x = torch.nn.functional.embedding(x, table)
        return self.projection(kind, x)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        collab = self._collab
        if self._once:
            self._collab = None
        weight = self.embedding.weight
        if collab is None:  # still checked: a prompt with placeholders and no rows is an error
            values = [weight.new_empty(0, weight.shape[1]) for _ in self.slots]
        else:
            values = [self._rows(collab, k) for k in range(len(self.slots))]
        shape = input_ids.shape
        ids = input_ids.reshape(-1, shape[-1]) if input_ids.dim() != 2 else input_ids
        try:
            out = ops.splice_collab_rows(ids, weight, self.placeholder_ids, values)
        except ValueError as exc:
            if collab is None and "placeholder occurrences" in str(exc):
                raise ValueError(f"input_ids hold {'/'.join(self.tokens)} placeholders but no collab batch was "
                                 "given (pass collab=... to forward/generate)") from exc
            raise
        return out.reshape(*shape, weight.shape[1])
