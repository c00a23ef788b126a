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
import torch.nn.functional as F
from torch import nn

from fastrec.ops import _checks
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


def expansion_index(prompt_ids: torch.Tensor, placeholder: int, expand: int, rows: int) -> torch.Tensor:
    """Index [rows * expand] of the slot rows after generate expands the batch (each prompt repeated `expand`
    times in a row, as ``repeat_interleave(expand, dim=0)``).

    The `rows` rows of one placeholder type come in row-major order of `prompt_ids` [B, T]; prompt b holds c_b
    of them (LLaRA-style prompts may hold different numbers). Expanded row j takes original row index[j].
    Device ops only (searchsorted), no host sync; indices are clamped in range, so a count mismatch is left
    to the splice's own check.
    """
    counts = (prompt_ids == placeholder).sum(1)  # [B]
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    j = torch.arange(rows * expand, device=prompt_ids.device)
    block = torch.searchsorted(ends * expand, j, right=True).clamp_(max=prompt_ids.shape[0] - 1)
    within = (j - starts[block] * expand) % counts[block].clamp(min=1)
    return (starts[block] + within).clamp_(min=0, max=max(rows - 1, 0))


class CollabTokenEmbedding(nn.Module):
    """Drop-in for an LLM's input embedding that fills placeholder tokens with projected collaborative rows.

    ``slots`` names the kind ("user", "item", "warm") of each placeholder id. The rows for a call are
    given with :meth:`use` as ``{kind or token: tensor}``: int ids [N_s] (rows of the table set with
    :meth:`set_tables`) or float rows [N_s, d] (projected directly), one per occurrence in row-major order.
    Without rows, prompts must hold no placeholder (else a ValueError).

    When every slot is given as ids of a table and the projections are plain MLPs in the embedding's dtype,
    one call of the fused ``fastrec.ops.collab_inputs_embeds`` gathers, projects and splices. ``validate``
    (default True) checks ids and placeholder counts; on a GPU each check is a host sync, so turn it off
    for speed once the inputs are known to be right (checks are skipped under torch.compile anyway).
    """

    def __init__(self, embedding: nn.Embedding, placeholder_ids: Sequence[int], slots: Sequence[str],
                 projection: HybridProjection, tokens: Sequence[str] | None = None, validate: bool = True) -> None:
        super().__init__()
        if len(placeholder_ids) != len(slots):
            raise ValueError(f"{len(placeholder_ids)} placeholder ids but {len(slots)} slot kinds")
        for kind in slots:
            projection._module(kind)
        self.embedding = embedding
        self.projection = projection
        self.slots = list(slots)
        self.tokens = list(tokens) if tokens is not None else list(slots)
        self.validate = validate
        self.register_buffer("placeholder_ids", torch.tensor(list(placeholder_ids), dtype=torch.int64),
                             persistent=False)
        self._placeholders = [int(p) for p in placeholder_ids]
        self.tables: dict[str, torch.Tensor] = {}
        self._collab: Collab | None = None
        self._mode = "all"  # "all": every call; "once": the next call only; "generate": see generating()
        self._prompt: torch.Tensor | None = None
        self._expanded: list[torch.Tensor] | None = None
        self._calls = 0

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

    def _projection_param(self, kind: str) -> torch.Tensor | None:
        if kind not in self.projection.kinds():
            return None
        return next(self.projection._module(kind).parameters())

    def set_tables(self, **tables: torch.Tensor | None) -> None:
        """Collaborative tables by kind (e.g. user=[U, d], item=[I, d], warm=[I, H_warm]); None removes one.

        A table is cast once, here, to its projection's dtype and device (fp32 MF tables with a bf16 model);
        a trainable table (requires_grad) must already match, since a cast copy would not train.
        """
        for kind, t in tables.items():
            if kind not in KINDS:
                raise ValueError(f"unknown table kind {kind!r}; choose from {KINDS}")
            if t is None:
                self.tables.pop(kind, None)
                continue
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
                raise ValueError(f"table {kind!r} must be a 2-D float tensor")
            w = self._projection_param(kind)
            if w is not None and (t.dtype != w.dtype or t.device != w.device):
                if t.requires_grad:
                    raise ValueError(f"table {kind!r} is trainable and {t.dtype} on {t.device}, but the {kind} "
                                     f"projection is {w.dtype} on {w.device}; a cast copy would not train: pass "
                                     "a table that matches")
                t = t.detach().to(device=w.device, dtype=w.dtype)
            self.tables[kind] = t

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - nn.Module's signature
        """model.to(device / dtype) moves the (frozen) tables with the projection, as buffers would be."""
        super()._apply(fn, recurse)
        self.tables = {k: t if t.requires_grad else fn(t) for k, t in self.tables.items()}
        return self

    def _enter(self, collab: Collab | None, mode: str, prompt: torch.Tensor | None = None) -> tuple:
        previous = (self._collab, self._mode, self._prompt, self._expanded, self._calls)
        self._collab, self._mode, self._prompt, self._expanded, self._calls = collab, mode, prompt, None, 0
        return previous

    def _exit(self, previous: tuple) -> None:
        self._collab, self._mode, self._prompt, self._expanded, self._calls = previous

    @contextlib.contextmanager
    def use(self, collab: Collab | None, once: bool = False) -> Iterator[None]:
        """Rows for the forward calls inside the block (``once``: only the first)."""
        previous = self._enter(collab, "once" if once else "all")
        try:
            yield
        finally:
            self._exit(previous)

    @contextlib.contextmanager
    def generating(self, collab: Collab | None, prompt_ids: torch.Tensor) -> Iterator[None]:
        """Rows for a `generate` call on the prompts `prompt_ids` [B, T] (before generate expands them).

        The first forward fixes the expansion factor E = its batch size / B (beams, num_return_sequences)
        and the rows are repeated to follow it, prompt by prompt; every later forward that re-feeds the
        whole sequence (use_cache=False) takes them again, a cached decoding step (new tokens only, which
        never hold a placeholder: generate suppresses them) takes none.
        """
        if prompt_ids.dim() != 2:
            raise ValueError(f"generate's input_ids must be [batch, length], got shape {tuple(prompt_ids.shape)}")
        previous = self._enter(collab, "generate", prompt_ids)
        try:
            yield
        finally:
            self._exit(previous)

    def _slot_inputs(self, collab: Collab) -> list[torch.Tensor]:
        """The ids [N_s] or float rows [N_s, d] given for each slot."""
        out = []
        for kind, token in zip(self.slots, self.tokens, strict=True):
            if token in collab:
                x = collab[token]
            elif kind in collab:
                x = collab[kind]
            else:
                raise ValueError(f"the collab batch has no rows for {token} (kind {kind!r}); keys: {list(collab)}")
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"collab[{kind!r}] must be a tensor, got {type(x).__name__}")
            if x.is_floating_point():
                if x.dim() != 2:
                    raise ValueError(f"collab[{kind!r}] rows must be 2-D [N, d], got shape {tuple(x.shape)}")
                x = x.to(self._projection_param(kind).device, non_blocking=True)
            else:
                if kind not in self.tables:
                    raise ValueError(f"collab[{kind!r}] holds ids but no {kind!r} table was set (set_tables)")
                if x.dim() != 1:
                    raise ValueError(f"collab[{kind!r}] ids must be 1-D, got shape {tuple(x.shape)}")
                table = self.tables[kind]
                x = x.to(table.device, non_blocking=True)
                if self.validate and _checks.can_read(x):  # value checks read data: a host sync on a GPU
                    ops._check_ids_range(f"collab[{kind!r}]", x, table.shape[0], f"the rows of the {kind} table")
            out.append(x)
        return out

    def _current(self, input_ids: torch.Tensor) -> list[torch.Tensor] | None:
        """The slot inputs of this forward call (None: this call takes no rows)."""
        collab = self._collab
        if collab is None:
            return None
        if self._mode == "once":
            self._collab = None
        if self._mode != "generate":
            return self._slot_inputs(collab)
        first, self._calls = self._calls == 0, self._calls + 1
        if not first and input_ids.shape[-1] <= self._prompt.shape[-1]:
            return None  # a cached decoding step: only new tokens, no placeholder among them
        if self._expanded is None:
            self._expanded = self._expand(self._slot_inputs(collab), input_ids.shape[0])
        return self._expanded

    def _expand(self, inputs: list[torch.Tensor], batch: int) -> list[torch.Tensor]:
        prompt = self._prompt
        if batch % prompt.shape[0]:
            raise ValueError(f"generate ran a batch of {batch} rows for {prompt.shape[0]} prompts")
        expand = batch // prompt.shape[0]
        if expand == 1:
            return inputs
        out = []
        for x, p in zip(inputs, self._placeholders, strict=True):
            index = expansion_index(prompt.to(x.device), p, expand, x.shape[0])
            out.append(x.index_select(0, index))
        return out

    def _fused(self, inputs: list[torch.Tensor]) -> bool:
        """Whether one collab_inputs_embeds call can do it all: ids for every slot, plain projections and tables
        in the embedding's dtype and device."""
        if self.projection.moe and any(k in ("user", "item") for k in self.slots):
            return False
        w = self.embedding.weight
        for x, kind in zip(inputs, self.slots, strict=True):
            if x.is_floating_point():
                return False
            p = self._projection_param(kind)
            t = self.tables[kind]
            if p.dtype != w.dtype or t.dtype != w.dtype or p.device != w.device or t.device != w.device:
                return False
        return True

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        inputs = self._current(input_ids)
        weight = self.embedding.weight
        shape = input_ids.shape
        ids = input_ids.reshape(-1, shape[-1]) if input_ids.dim() != 2 else input_ids
        if inputs is not None and self._fused(inputs):
            out = ops.collab_inputs_embeds(ids, weight, self.placeholder_ids, inputs,
                                           [self.tables[k] for k in self.slots],
                                           [self.projection.weights(k) for k in self.slots], validate=self.validate)
            return out.reshape(*shape, weight.shape[1])
        if inputs is None:  # still checked: a prompt with placeholders and no rows is an error
            values = [weight.new_empty(0, weight.shape[1]) for _ in self.slots]
        else:
            values = []
            for x, kind in zip(inputs, self.slots, strict=True):
                if not x.is_floating_point():
                    x = F.embedding(x, self.tables[kind])
                values.append(self.projection(kind, x).to(weight.dtype))
        try:
            out = ops.splice_collab_rows(ids, weight, self.placeholder_ids, values, validate=self.validate)
        except ValueError as exc:
            if inputs is None and "placeholder occurrences" in str(exc):
                raise ValueError(f"input_ids hold {'/'.join(self.tokens)} placeholders but no collab batch was "
                                 "given (pass collab=... to forward/generate)") from exc
            raise
        return out.reshape(*shape, weight.shape[1])
