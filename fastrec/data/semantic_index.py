"""LC-Rec semantic item indices: ``{"0": ["<a_128>", "<b_241>", "<c_146>", "<d_235>"], ...}``.

Level l uses the letter ``chr(ord('a') + l)``; code k of that level is the token ``<{letter}_{k}>``.
Loading checks the file (no holes in the item ids, one level count, every token inside the codebook);
saving writes a temp file and renames it, so a crash never leaves a half-written index.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from pathlib import Path

import torch

__all__ = [
    "check_index", "codes_to_index", "collision_groups", "index_to_codes", "index_tokens", "load_index",
    "save_index", "token_of",
]

_TOKEN = re.compile(r"^<([a-z])_(\d+)>$")


def token_of(level: int, code: int) -> str:
    """LC-Rec's token for `code` at `level` (level 0 -> ``<a_code>``)."""
    if not 0 <= level < 26:
        raise ValueError(f"level must lie in [0, 26), got {level}")
    return f"<{chr(ord('a') + level)}_{int(code)}>"


def index_tokens(levels: int, codebook_size: int) -> list[str]:
    """Every index token of a `levels` x `codebook_size` index, level by level."""
    return [token_of(lv, k) for lv in range(levels) for k in range(codebook_size)]


def codes_to_index(codes: torch.Tensor) -> dict[str, list[str]]:
    """codes [N, L] -> ``{"0": ["<a_..>", ...], ...}`` (item i is row i)."""
    if not isinstance(codes, torch.Tensor) or codes.dim() != 2:
        raise ValueError("codes must be a 2-D tensor [items, levels]")
    return {str(i): [token_of(lv, c) for lv, c in enumerate(row)] for i, row in enumerate(codes.tolist())}


def check_index(index: dict, levels: int | None = None, codebook_size: int | None = None) -> tuple[int, int]:
    """Validate an LC-Rec index dict; returns (items, levels).

    Raises ValueError naming the problem: item ids that are not 0..n-1 (holes), rows of different length
    or not `levels` long, tokens that are not ``<letter_code>``, a letter at the wrong level, or a code
    outside [0, codebook_size).
    """
    if not isinstance(index, dict) or not index:
        raise ValueError("index must be a non-empty dict {item_id: [tokens]}")
    try:
        ids = sorted(int(k) for k in index)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"index keys must be integer item ids: {exc}") from None
    if ids != list(range(len(ids))):
        missing = sorted(set(range(ids[-1] + 1)) - set(ids))[:5]
        raise ValueError(f"index has holes: item ids must be 0..{len(ids) - 1}, missing e.g. {missing}")
    lengths = Counter(len(v) if isinstance(v, list) else -1 for v in index.values())
    if -1 in lengths:
        raise ValueError("index values must be lists of token strings")
    if len(lengths) != 1:
        raise ValueError(f"index rows have different level counts: {dict(lengths)}")
    found = next(iter(lengths))
    if levels is not None and found != levels:
        raise ValueError(f"index has {found} levels, expected {levels}")
    for item, tokens in index.items():
        for lv, tok in enumerate(tokens):
            m = _TOKEN.match(tok) if isinstance(tok, str) else None
            if m is None or m.group(1) != chr(ord("a") + lv):
                raise ValueError(f"item {item}: token {tok!r} at level {lv} is not of the form "
                                 f"<{chr(ord('a') + lv)}_code>")
            if codebook_size is not None and int(m.group(2)) >= codebook_size:
                raise ValueError(f"item {item}: token {tok} is outside the codebook (size {codebook_size})")
    return len(ids), found


def index_to_codes(index: dict, levels: int | None = None, codebook_size: int | None = None) -> torch.Tensor:
    """LC-Rec index dict -> codes [N, L] int64 (checked with `check_index`)."""
    n, lv = check_index(index, levels, codebook_size)
    codes = torch.empty(n, lv, dtype=torch.int64)
    for k, tokens in index.items():
        codes[int(k)] = torch.tensor([int(_TOKEN.match(t).group(2)) for t in tokens])
    return codes


def collision_groups(codes: torch.Tensor) -> list[list[int]]:
    """Groups of items (size >= 2) that share the same code row."""
    if codes.shape[0] == 0:
        return []
    _, inverse, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)  # items grouped by row, ascending ids inside a group
    sizes = counts.tolist()
    groups = [g for g in torch.split(order, sizes) if len(g) > 1]
    return sorted((g.tolist() for g in groups), key=lambda g: g[0])


def load_index(path: str | Path, levels: int | None = None, codebook_size: int | None = None) -> dict:
    """Read and check an LC-Rec index JSON file."""
    with open(path, encoding="utf-8") as f:
        index = json.load(f)
    try:
        check_index(index, levels, codebook_size)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return index


def save_index(index: dict, path: str | Path) -> None:
    """Write an LC-Rec index JSON atomically (temp file in the same folder, then rename)."""
    check_index(index)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({str(k): index[str(k)] for k in sorted(index, key=int)}, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
