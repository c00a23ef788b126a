"""The in-memory interaction container, id remapping, k-core filtering and the leave-one-out split.

Everything here is plain PyTorch on CPU (int64 tensors) and works on the CSR layout
``indptr [U+1]`` / ``items [nnz]``: user ``u``'s chronological sequence is
``items[indptr[u]:indptr[u+1]]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch

__all__ = [
    "Interactions",
    "LeaveOneOutSplit",
    "remap_ids",
    "from_pairs",
    "from_sequences",
    "k_core",
    "leave_one_out",
    "seen_csr",
]


def _sort_key(values: Sequence[str]) -> list[str]:
    """Numeric order when every id is an integer string (so "0".."n-1" maps to itself), else string order."""
    try:
        return sorted(values, key=int)
    except ValueError:
        return sorted(values)


def remap_ids(raw_ids: Iterable[object], vocab: Iterable[object] = ()) -> tuple[torch.Tensor, list[str]]:
    """Map raw ids (any hashable, compared as ``str``) to contiguous ``0..n-1``.

    The contiguous order is numeric when every id is an integer string (so already-contiguous
    ids such as LC-Rec's ``"0".."n-1"`` map to themselves) and lexicographic otherwise.

    Args:
        raw_ids: the id of every interaction (a sequence, or a torch / numpy array).
        vocab: extra ids that belong to the universe even if they never occur in ``raw_ids``.

    Returns:
        ``(codes, vocab)``: int64 tensor with the contiguous id of each raw id, and the list
        ``vocab[code] == str(raw id)`` (the inverse map).
    """
    if hasattr(raw_ids, "tolist"):  # torch / numpy arrays: convert elements to python scalars first
        raw_ids = raw_ids.tolist()
    if hasattr(vocab, "tolist"):
        vocab = vocab.tolist()
    raw = [str(r) for r in raw_ids]
    universe = _sort_key(list(set(raw).union(str(v) for v in vocab)))
    lookup = {r: i for i, r in enumerate(universe)}
    codes = torch.tensor([lookup[r] for r in raw], dtype=torch.int64)
    return codes, universe


@dataclass(eq=False)
class Interactions:
    """Per-user chronological item sequences in CSR form, with the id maps and item text.

    Attributes:
        indptr: int64 ``[num_users + 1]``; user ``u`` owns ``items[indptr[u]:indptr[u+1]]``.
        items: int64 ``[nnz]`` contiguous item ids, chronological within each user.
        num_items: size of the item universe (items may have no interaction).
        user_ids: raw id of each contiguous user (``user_ids[u]``), the inverse user map.
        item_ids: raw id of each contiguous item, the inverse item map.
        item_text: contiguous item id -> ``{"title", "description", "brand", "categories"}`` (may be empty).
        item_index: contiguous item id -> LC-Rec semantic-ID tokens (``["<a_1>", "<b_2>", ...]``) or None.
        ratings: optional float32 ``[nnz]`` aligned with ``items``.
        timestamps: optional int64 ``[nnz]`` aligned with ``items``.
        name: data set name.
    """

    indptr: torch.Tensor
    items: torch.Tensor
    num_items: int
    user_ids: list[str]
    item_ids: list[str]
    item_text: dict[int, dict[str, str]] = field(default_factory=dict)
    item_index: dict[int, list[str]] | None = None
    ratings: torch.Tensor | None = None
    timestamps: torch.Tensor | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.indptr.dim() != 1 or self.indptr.numel() != len(self.user_ids) + 1:
            raise ValueError("indptr must be 1-D with len(user_ids) + 1 entries")
        if int(self.indptr[-1]) != self.items.numel():
            raise ValueError("indptr[-1] must equal the number of items")
        if len(self.item_ids) != self.num_items:
            raise ValueError("item_ids must have num_items entries")
        if self.items.numel() and (int(self.items.min()) < 0 or int(self.items.max()) >= self.num_items):
            raise ValueError("items must lie in [0, num_items)")

    @property
    def num_users(self) -> int:
        """Number of users (rows of the CSR)."""
        return len(self.user_ids)

    @property
    def num_interactions(self) -> int:
        """Total number of interactions (nnz)."""
        return self.items.numel()

    @cached_property
    def user_map(self) -> dict[str, int]:
        """Raw user id -> contiguous id."""
        return {r: i for i, r in enumerate(self.user_ids)}

    @cached_property
    def item_map(self) -> dict[str, int]:
        """Raw item id -> contiguous id."""
        return {r: i for i, r in enumerate(self.item_ids)}

    def lengths(self) -> torch.Tensor:
        """int64 ``[num_users]``: sequence length of every user."""
        return self.indptr[1:] - self.indptr[:-1]

    def users(self) -> torch.Tensor:
        """int64 ``[nnz]``: the user of every interaction (row index expanded from ``indptr``)."""
        return torch.repeat_interleave(torch.arange(self.num_users), self.lengths())

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(users, items)`` int64 ``[nnz]`` tensors of every interaction."""
        return self.users(), self.items

    def sequence(self, user: int) -> list[int]:
        """Chronological item list of one contiguous user."""
        return self.items[self.indptr[user] : self.indptr[user + 1]].tolist()

    def sequences(self) -> list[list[int]]:
        """Chronological item lists of every user."""
        return [list(s) for s in torch.split(self.items, self.lengths().tolist())] if self.num_users else []

    def select(self, keep: torch.Tensor) -> Interactions:
        """Keep the interactions where the bool mask ``keep [nnz]`` is True (users and items unchanged)."""
        counts = torch.zeros(self.num_users, dtype=torch.int64)
        counts.index_add_(0, self.users()[keep], torch.ones(int(keep.sum()), dtype=torch.int64))
        return replace(
            self,
            indptr=_indptr(counts),
            items=self.items[keep],
            ratings=None if self.ratings is None else self.ratings[keep],
            timestamps=None if self.timestamps is None else self.timestamps[keep],
        )

    def __repr__(self) -> str:
        return (
            f"Interactions(name={self.name!r}, num_users={self.num_users}, num_items={self.num_items}, "
            f"num_interactions={self.num_interactions})"
        )


def _indptr(counts: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(counts.numel() + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=out[1:])
    return out


def from_pairs(
    users: Sequence[object],
    items: Sequence[object],
    ratings: Sequence[float] | None = None,
    timestamps: Sequence[int] | None = None,
    item_vocab: Iterable[object] = (),
    user_vocab: Iterable[object] = (),
    name: str = "",
) -> Interactions:
    """Build ``Interactions`` from raw (user, item) pairs, remapping both to contiguous ids.

    Within a user the order is by timestamp when given (stable, ties keep input order), else input order.

    Args:
        users, items: raw ids, one per interaction.
        ratings, timestamps: optional values aligned with the pairs.
        item_vocab: extra raw item ids that belong to the universe.
        user_vocab: extra raw user ids (they get an empty row).
        name: data set name.
    """
    if len(users) != len(items):
        raise ValueError(f"users and items must have the same length, got {len(users)} and {len(items)}")
    u, user_ids = remap_ids(users, user_vocab)
    i, item_ids = remap_ids(items, item_vocab)
    r = None if ratings is None else torch.tensor(list(ratings), dtype=torch.float32)
    t = None if timestamps is None else torch.tensor(list(timestamps), dtype=torch.int64)
    for arg, v in (("ratings", r), ("timestamps", t)):
        if v is not None and v.numel() != u.numel():
            raise ValueError(f"{arg} must have one entry per interaction")
    order = torch.arange(u.numel())
    if t is not None:
        order = order[torch.sort(t, stable=True).indices]
    order = order[torch.sort(u[order], stable=True).indices]
    counts = torch.bincount(u, minlength=len(user_ids))
    return Interactions(
        indptr=_indptr(counts),
        items=i[order],
        num_items=len(item_ids),
        user_ids=user_ids,
        item_ids=item_ids,
        ratings=None if r is None else r[order],
        timestamps=None if t is None else t[order],
        name=name,
    )


def from_sequences(
    sequences: dict[str, Sequence[object]], item_vocab: Iterable[object] = (), name: str = ""
) -> Interactions:
    """Build ``Interactions`` from ``{raw user id: [raw item ids, chronological]}`` (the LC-Rec layout).

    Users with an empty sequence keep an (empty) row.
    """
    users = [u for u, seq in sequences.items() for _ in seq]
    items = [it for seq in sequences.values() for it in seq]
    return from_pairs(users, items, item_vocab=item_vocab, user_vocab=sequences.keys(), name=name)


def k_core(data: Interactions, k: int = 5, user_k: int | None = None, item_k: int | None = None) -> Interactions:
    """Iterative k-core filtering: drop users and items with fewer than ``k`` interactions until stable.

    Repeated (user, item) interactions each count. Removed users and items disappear and the
    survivors are remapped to contiguous ids (``user_ids``/``item_ids``/``item_text``/``item_index``
    follow); items without interactions are dropped as well. Order within users is kept.

    Args:
        data: the interactions.
        k: minimum count for both sides.
        user_k, item_k: override ``k`` for users / items.
    """
    uk = k if user_k is None else user_k
    ik = k if item_k is None else item_k
    if uk < 0 or ik < 0:
        raise ValueError(f"k must be >= 0, got user_k={uk}, item_k={ik}")
    users, items = data.pairs()
    idx = torch.arange(items.numel())  # surviving interactions; the working set shrinks every round
    while True:
        u, i = users[idx], items[idx]
        ucount = torch.bincount(u, minlength=data.num_users)
        icount = torch.bincount(i, minlength=data.num_items)
        ok = (ucount[u] >= uk) & (icount[i] >= ik)
        if bool(ok.all()):
            break
        idx = idx[ok]
    keep = torch.zeros(items.numel(), dtype=torch.bool)
    keep[idx] = True
    return _compact(data, keep)


def _compact(data: Interactions, keep: torch.Tensor) -> Interactions:
    """Keep the masked interactions and renumber the surviving users and items contiguously."""
    users, items = data.pairs()
    users, items = users[keep], items[keep]
    kept_users = torch.unique(users)
    kept_items = torch.unique(items)
    user_new = torch.full((data.num_users,), -1, dtype=torch.int64)
    user_new[kept_users] = torch.arange(kept_users.numel())
    item_new = torch.full((data.num_items,), -1, dtype=torch.int64)
    item_new[kept_items] = torch.arange(kept_items.numel())
    old_items = kept_items.tolist()
    return Interactions(
        indptr=_indptr(torch.bincount(user_new[users], minlength=kept_users.numel())),
        items=item_new[items],
        num_items=len(old_items),
        user_ids=[data.user_ids[u] for u in kept_users.tolist()],
        item_ids=[data.item_ids[i] for i in old_items],
        item_text={n: data.item_text[o] for n, o in enumerate(old_items) if o in data.item_text},
        item_index=None
        if data.item_index is None
        else {n: data.item_index[o] for n, o in enumerate(old_items) if o in data.item_index},
        ratings=None if data.ratings is None else data.ratings[keep],
        timestamps=None if data.timestamps is None else data.timestamps[keep],
        name=data.name,
    )


@dataclass
class LeaveOneOutSplit:
    """The LC-Rec leave-one-out split of one ``Interactions`` object.

    For every user with ``n >= 3`` items: ``items[:-2]`` are train, ``items[-2]`` is the validation
    target and ``items[-1]`` the test target (histories: ``items[:-2]`` for valid, ``items[:-1]`` for test),
    exactly as LC-Rec's ``SeqRecDataset``. Users with fewer than 3 items put all their items in train
    and appear in neither ``valid_users`` nor ``test_users``.

    Attributes:
        data: the full interactions.
        train: the training interactions (same users and items as ``data``).
        valid_users, valid_targets: int64 ``[Uv]``.
        test_users, test_targets: int64 ``[Ut]`` (the same users as valid).
    """

    data: Interactions
    train: Interactions
    valid_users: torch.Tensor
    valid_targets: torch.Tensor
    test_users: torch.Tensor
    test_targets: torch.Tensor

    def history(self, stage: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """Chronological history before the target of each eval user, as CSR ``(indptr [Ue+1], items)``.

        Row ``j`` belongs to ``valid_users[j]`` (stage ``"valid"``) or ``test_users[j]`` (``"test"``).
        """
        users = self._users(stage)
        drop = 2 if stage == "valid" else 1
        lengths = self.data.lengths()[users] - drop
        starts = self.data.indptr[users]
        return _indptr(lengths), self.data.items[_gather_index(starts, lengths)]

    def seen(self, stage: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """Per-user items to exclude when ranking, CSR over *all* users, sorted and unique within each row.

        ``"valid"``: the train items. ``"test"``: the train items plus the validation target.
        """
        users, items = self.train.pairs()
        if stage == "test":
            users = torch.cat([users, self.valid_users])
            items = torch.cat([items, self.valid_targets])
        else:
            self._users(stage)
        return seen_csr(users, items, self.data.num_users, self.data.num_items)

    def _users(self, stage: str) -> torch.Tensor:
        if stage == "valid":
            return self.valid_users
        if stage == "test":
            return self.test_users
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")


def _gather_index(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Flat indices ``[s, s+1, ..., s+len-1]`` for every (start, length), concatenated (vectorised)."""
    total = int(lengths.sum())
    seg = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    offsets = torch.arange(total) - torch.repeat_interleave(_indptr(lengths)[:-1], lengths)
    return starts[seg] + offsets


def seen_csr(
    users: torch.Tensor, items: torch.Tensor, num_users: int, num_items: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-user sorted, de-duplicated item CSR ``(indptr [num_users+1], indices)`` from (user, item) pairs."""
    users = torch.as_tensor(users, dtype=torch.int64)
    items = torch.as_tensor(items, dtype=torch.int64)
    if users.shape != items.shape or users.dim() != 1:
        raise ValueError(f"users and items must be 1-D of equal length, got {users.shape} and {items.shape}")
    if users.numel() and (int(users.min()) < 0 or int(users.max()) >= num_users):
        raise ValueError(f"users must lie in [0, {num_users})")
    if items.numel() and (int(items.min()) < 0 or int(items.max()) >= num_items):
        raise ValueError(f"items must lie in [0, {num_items})")
    keys = torch.unique(users * max(num_items, 1) + items)  # sorted
    rows = keys // max(num_items, 1)
    return _indptr(torch.bincount(rows, minlength=num_users)), keys % max(num_items, 1)


def leave_one_out(data: Interactions) -> LeaveOneOutSplit:
    """Split as LC-Rec: per user, last item = test, second-last = valid, the rest = train.

    Users with fewer than 3 items keep everything in train and get no valid/test target
    (documented in :class:`LeaveOneOutSplit`).
    """
    lengths = data.lengths()
    ends = data.indptr[1:]
    eval_users = torch.nonzero(lengths >= 3).flatten()
    pos = torch.arange(data.num_interactions)
    end_of = torch.repeat_interleave(ends, lengths)
    len_of = torch.repeat_interleave(lengths, lengths)
    in_train = (len_of < 3) | (pos < end_of - 2)
    train = data.select(in_train)
    return LeaveOneOutSplit(
        data=data,
        train=train,
        valid_users=eval_users,
        valid_targets=data.items[ends[eval_users] - 2],
        test_users=eval_users.clone(),
        test_targets=data.items[ends[eval_users] - 1],
    )
