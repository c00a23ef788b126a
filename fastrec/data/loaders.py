"""Loaders: LC-Rec JSON, MovieLens-1M ``.dat`` and plain CSV, all returning :class:`Interactions`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .interactions import Interactions, from_pairs, from_sequences

__all__ = ["load_lcrec", "load_movielens", "load_csv", "TEXT_FIELDS"]

TEXT_FIELDS = ("title", "description", "brand", "categories")


def _infer_name(folder: Path) -> str:
    found = sorted(p.name[: -len(".inter.json")] for p in folder.glob("*.inter.json"))
    if len(found) != 1:
        raise ValueError(f"name: cannot infer the data set name in {folder}, found {found or 'no *.inter.json'}")
    return found[0]


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON, truncated or corrupt? ({e})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object at top level")
    return obj


def _is_id(value: object) -> bool:
    """A non-negative integer: an int (not a bool) or a string of decimal digits, as LC-Rec writes ids."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, str) and value.isascii() and value.isdigit()


def _check_inters(inters: dict, path: Path) -> None:
    for user, seq in inters.items():
        if not _is_id(user):
            raise ValueError(f"{path}: user {user!r} is not a non-negative integer id")
        if not isinstance(seq, list):
            raise ValueError(f"{path}: user {user!r} must map to a list of item ids, got {type(seq).__name__}")
        bad = [v for v in seq if not _is_id(v)]
        if bad:
            raise ValueError(f"{path}: user {user!r} has item id {bad[0]!r}, not a non-negative integer")


def _check_item_keys(obj: dict, path: Path) -> None:
    bad = [k for k in obj if not _is_id(k)]
    if bad:
        raise ValueError(f"{path}: item id {bad[0]!r} is not a non-negative integer")


def _text_fields(entry: object) -> dict[str, str]:
    if not isinstance(entry, dict):
        return {k: "" for k in TEXT_FIELDS}
    out = {k: "" if entry.get(k) is None else str(entry.get(k)) for k in TEXT_FIELDS}
    out.update({k: str(v) for k, v in entry.items() if k not in out and v is not None})
    return out


def _check_index(index: dict[str, list[str]], path: Path) -> None:
    for item, tokens in index.items():
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError(f"{path}: item {item!r} must map to a list of token strings")


def load_lcrec(folder: str | Path, name: str | None = None, index_file: str | Path | None = None) -> Interactions:
    """Load an LC-Rec data set: ``<name>.inter.json``, optional ``<name>.item.json`` and index file.

    ``<name>.inter.json`` is ``{user_id: [item_id, ...chronological]}``; ``<name>.item.json`` is
    ``{item_id: {title, description, brand, categories}}``; the index is ``{item_id: ["<a_1>", ...]}``.
    User and item ids are non-negative integers (ints, or strings of digits); anything else, and a file
    that is not valid JSON (truncated), raises ValueError naming the file (and the user).
    The item universe is the union of items in the three files; ids are remapped to contiguous
    ``0..n-1`` in numeric order, so LC-Rec's already contiguous ids keep their value.

    Args:
        folder: directory holding the files.
        name: data set name (file prefix); inferred when the folder has exactly one ``*.inter.json``.
        index_file: path of the semantic-ID index; default ``<folder>/<name>.index.json`` when it exists.

    Returns:
        :class:`Interactions` with ``item_text`` (empty when there is no item file) and ``item_index``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder: {folder} is not a directory")
    name = name or _infer_name(folder)
    inter_path = folder / f"{name}.inter.json"
    if not inter_path.is_file():
        raise ValueError(f"name: {inter_path} does not exist")
    inters = _read_json(inter_path)
    _check_inters(inters, inter_path)
    item_path = folder / f"{name}.item.json"
    items = _read_json(item_path) if item_path.is_file() else {}
    _check_item_keys(items, item_path)
    index_path = Path(index_file) if index_file is not None else folder / f"{name}.index.json"
    if index_file is not None and not index_path.is_file():
        raise ValueError(f"index_file: {index_path} does not exist")
    index = _read_json(index_path) if index_path.is_file() else None
    if index is not None:
        _check_item_keys(index, index_path)
        _check_index(index, index_path)
    vocab = list(items) + (list(index) if index is not None else [])
    data = from_sequences(inters, item_vocab=vocab, name=name)
    imap = data.item_map
    data.item_text = {imap[str(k)]: _text_fields(v) for k, v in items.items()}
    if index is not None:
        data.item_index = {imap[str(k)]: list(v) for k, v in index.items()}
    return data


def load_movielens(folder: str | Path, min_rating: float | None = None, name: str = "ml-1m") -> Interactions:
    """Load MovieLens-1M ``ratings.dat`` (``user::movie::rating::timestamp``) and ``movies.dat``.

    Files are ``::``-separated latin-1. Each user's sequence is sorted by timestamp (stable).
    Items are the rated movies (after ``min_rating``); ``item_text`` holds the title and the genres
    as comma-separated ``categories`` when ``movies.dat`` is present.

    Args:
        folder: directory holding ``ratings.dat`` (and optionally ``movies.dat``).
        min_rating: keep only ratings ``>= min_rating`` (implicit feedback); None keeps all.
        name: data set name.
    """
    folder = Path(folder)
    ratings_path = folder / "ratings.dat"
    if not ratings_path.is_file():
        raise ValueError(f"folder: {ratings_path} does not exist")
    users, items, ratings, stamps = [], [], [], []
    for lineno, line in enumerate(ratings_path.read_text(encoding="latin-1").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != 4:
            raise ValueError(f"{ratings_path}:{lineno}: expected user::movie::rating::timestamp")
        if min_rating is not None and float(parts[2]) < min_rating:
            continue
        users.append(parts[0])
        items.append(parts[1])
        ratings.append(float(parts[2]))
        stamps.append(int(parts[3]))
    data = from_pairs(users, items, ratings, stamps, name=name)
    movies_path = folder / "movies.dat"
    if movies_path.is_file():
        imap = data.item_map
        for line in movies_path.read_text(encoding="latin-1").splitlines():
            parts = line.split("::")
            if len(parts) == 3 and parts[0] in imap:
                text = dict.fromkeys(TEXT_FIELDS, "")
                text.update(title=parts[1], categories=parts[2].replace("|", ","))
                data.item_text[imap[parts[0]]] = text
    return data


def _has_header(first: list[str]) -> bool:
    if len(first) >= 3:
        try:
            float(first[2])
        except ValueError:
            return True
    return first[0].strip().lower() in ("user", "user_id", "userid", "uid")


def load_csv(
    path: str | Path, delimiter: str = ",", header: bool | None = None, name: str | None = None
) -> Interactions:
    """Load a CSV of ``user,item[,rating][,timestamp]`` rows.

    Args:
        path: the CSV file.
        delimiter: field separator.
        header: whether the first row is a header; None detects it (a non-numeric rating column or a
            first field named user/user_id/userid/uid).
        name: data set name (default: the file stem).

    Each user's sequence is ordered by timestamp when the 4th column exists (stable), else file order.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f, delimiter=delimiter) if r and any(c.strip() for c in r)]
    if rows and (header if header is not None else _has_header(rows[0])):
        rows = rows[1:]
    widths = {len(r) for r in rows}
    if len(widths) > 1 or (widths and not 2 <= widths.pop() <= 4):
        raise ValueError(f"path: {path} rows must all have 2 to 4 columns (user,item[,rating][,timestamp])")
    width = len(rows[0]) if rows else 2
    try:
        ratings = [float(r[2]) for r in rows] if width >= 3 else None
        stamps = [int(float(r[3])) for r in rows] if width == 4 else None
    except ValueError as e:
        raise ValueError(f"path: {path} has a non-numeric rating or timestamp ({e})") from e
    users = [r[0].strip() for r in rows]
    items = [r[1].strip() for r in rows]
    return from_pairs(users, items, ratings, stamps, name=name or path.stem)
