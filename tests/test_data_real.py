"""The real LC-Rec data in ../shared/data (never copied into the repo): documented counts and structure."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastrec.data import InteractionGraph, k_core, leave_one_out, load_lcrec

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
pytestmark = pytest.mark.real_data


def _folder(sub: str) -> Path:
    folder = DATA / sub
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder


@pytest.mark.parametrize(
    ("sub", "name", "users", "items", "inters"),
    [
        ("amazon-scientific", "Scientific", 8_317, 4_344, 58_492),
        ("amazon-instruments", "Instruments", 24_772, 9_922, 206_153),
    ],
)
def test_counts_and_split(sub: str, name: str, users: int, items: int, inters: int) -> None:
    data = load_lcrec(_folder(sub))
    assert data.name == name
    assert (data.num_users, data.num_items, data.num_interactions) == (users, items, inters)
    assert data.user_ids[:3] == ["0", "1", "2"] and data.item_ids[-1] == str(items - 1)  # ids kept
    assert int(data.lengths().min()) >= 5
    core = k_core(data, 5)  # the data sets are documented as 5-core already
    assert core.num_interactions == inters and torch.equal(core.items, data.items)
    split = leave_one_out(data)
    assert split.test_users.numel() == users
    assert split.train.num_interactions == inters - 2 * users
    graph = InteractionGraph.from_split(split)
    assert graph.num_nodes == users + items and graph.seen_indptr[-1] <= split.train.num_interactions
    assert torch.isfinite(graph.values).all() and graph.values.max() <= 1.0


def test_scientific_text_and_index() -> None:
    folder = _folder("amazon-scientific")
    index = folder / "indexes" / "rqvae_zcr" / "Scientific.index.json"
    data = load_lcrec(folder, index_file=index if index.is_file() else None)
    assert len(data.item_text) == 4_344
    assert data.item_text[0]["title"].startswith("SUPCO SPP6")
    assert data.item_text[0]["categories"].startswith("Industrial & Scientific")
    if index.is_file():
        assert len(data.item_index) == 4_344
        assert all(len(v) == 4 and v[0].startswith("<a_") for v in data.item_index.values())
        assert len({tuple(v) for v in data.item_index.values()}) == 4_344  # zcr: collision free


def test_instruments_external_index() -> None:
    folder = _folder("amazon-instruments")
    index = folder / "Instruments.index.genrec.json"
    if not index.is_file():
        pytest.skip("Instruments index absent")
    data = load_lcrec(folder, index_file=index)
    assert data.item_text == {} and len(data.item_index) == 9_922
