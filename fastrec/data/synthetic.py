"""The embedded default data set: deterministic, small, LC-Rec layout, text correlated with latent factors.

Items live in a small category tree (``Lab & Workshop > top > sub > leaf``). Each leaf has a centroid in
an 8-dimensional latent space and a few house brands; an item's factor is its leaf centroid plus noise,
its brand is mostly one of its leaf's brands, and its title/description adjectives are read off its two
strongest latent dimensions. Users mix one or two leaf centroids; each user's items are drawn without
replacement from ``softmax(user . item / T + popularity)`` with power-law (Zipf) item popularity, and
ordered along a per-user drift direction so sequences carry sequential signal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .interactions import Interactions, from_sequences
from .loaders import TEXT_FIELDS

__all__ = ["synthetic", "synthetic_raw"]

ROOT = "Lab & Workshop"
# (top, sub, leaf, noun, use)
LEAVES: tuple[tuple[str, str, str, str, str], ...] = (
    ("Lab Equipment", "Measurement", "Calipers", "caliper", "measuring small parts"),
    ("Lab Equipment", "Measurement", "Multimeters", "multimeter", "checking voltage and continuity"),
    ("Lab Equipment", "Measurement", "Thermometers", "thermometer", "reading sample temperatures"),
    ("Lab Equipment", "Glassware", "Beakers", "beaker", "mixing and heating liquids"),
    ("Lab Equipment", "Glassware", "Flasks", "flask", "titration and storage"),
    ("Lab Equipment", "Microscopy", "Microscopes", "microscope", "inspecting specimens"),
    ("Lab Equipment", "Microscopy", "Slides", "slide set", "preparing specimens"),
    ("Tools", "Hand Tools", "Screwdrivers", "screwdriver", "assembly and repair"),
    ("Tools", "Hand Tools", "Pliers", "pliers", "gripping and cutting wire"),
    ("Tools", "Hand Tools", "Wrenches", "wrench", "tightening bolts"),
    ("Tools", "Power Tools", "Drills", "drill", "drilling wood and metal"),
    ("Tools", "Power Tools", "Sanders", "sander", "finishing surfaces"),
    ("Tools", "Soldering", "Soldering Irons", "soldering iron", "joining electronic parts"),
    ("Tools", "Soldering", "Solder", "solder spool", "circuit board work"),
    ("Electronics", "Components", "Resistors", "resistor kit", "prototyping circuits"),
    ("Electronics", "Components", "Capacitors", "capacitor kit", "filtering and timing circuits"),
    ("Electronics", "Boards", "Microcontrollers", "microcontroller board", "embedded projects"),
    ("Electronics", "Boards", "Breadboards", "breadboard", "solderless prototyping"),
    ("Electronics", "Power", "Batteries", "battery pack", "portable power"),
    ("Electronics", "Power", "Power Supplies", "bench power supply", "powering test circuits"),
    ("Safety", "Protective Wear", "Gloves", "glove pair", "handling chemicals"),
    ("Safety", "Protective Wear", "Goggles", "goggles", "eye protection"),
    ("Safety", "Cleaning", "Wipes", "wipe pack", "cleaning optics and benches"),
    ("Safety", "Cleaning", "Brushes", "brush set", "removing dust and residue"),
)
BRANDS: tuple[str, ...] = (
    "Acmetric",
    "Borealis",
    "Calder",
    "Dynatek",
    "Everline",
    "Fulcrum",
    "Gravik",
    "Helios",
    "Ironwood",
    "Joule & Co",
    "Kestrel",
    "Lumatic",
    "Meridian",
    "Northgate",
    "Orbis",
    "Peregrine",
    "Quanta",
    "Redfield",
    "Solace",
    "Tessel",
    "Umbra",
    "Vantage",
    "Westbrook",
    "Xylo",
)
# one (positive, negative) adjective pair per latent dimension
ADJECTIVES: tuple[tuple[str, str], ...] = (
    ("compact", "heavy-duty"),
    ("precise", "rugged"),
    ("budget", "premium"),
    ("digital", "analog"),
    ("lightweight", "industrial"),
    ("portable", "benchtop"),
    ("classic", "modern"),
    ("ergonomic", "reinforced"),
)
PHRASES: tuple[str, ...] = (
    "Built for daily use in labs, classrooms and home workshops.",
    "Ships with a quick-start guide and a one-year warranty.",
    "A favourite of hobbyists and professionals alike.",
    "Tested to meet common safety and quality standards.",
    "Designed to fit standard benches, cases and kits.",
)
DIM = len(ADJECTIVES)


def _item_text(rng: np.random.Generator, leaf: int, factor: np.ndarray, brand: str, number: int) -> dict:
    top, sub, leaf_name, noun, use = LEAVES[leaf]
    strongest = np.argsort(-np.abs(factor), kind="stable")[:2]
    adjs = [ADJECTIVES[d][0] if factor[d] > 0 else ADJECTIVES[d][1] for d in strongest]
    model = f"{brand[:2].upper()}-{100 + number}"
    desc = (
        f"A {adjs[0]}, {adjs[1]} {noun} for {use}. "
        f"Part of the {brand} {leaf_name.lower()} line. {PHRASES[int(rng.integers(len(PHRASES)))]}"
    )
    return {
        "title": f"{brand} {adjs[0].capitalize()} {adjs[1].capitalize()} {noun.title()} {model}",
        "description": desc,
        "brand": brand,
        "categories": ",".join((ROOT, top, sub, leaf_name)),
    }


def _items(rng: np.random.Generator, num_items: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Item factors [I, DIM], log-popularity [I] (Zipf) and text."""
    n_leaf = len(LEAVES)
    centroids = rng.normal(0.0, 1.0, (n_leaf, DIM))
    leaf_brands = np.stack([rng.choice(len(BRANDS), 3, replace=False) for _ in range(n_leaf)])
    leaf = rng.integers(0, n_leaf, num_items)
    factors = centroids[leaf] + rng.normal(0.0, 0.35, (num_items, DIM))
    own = rng.random(num_items) < 0.85
    brand = np.where(own, leaf_brands[leaf, rng.integers(0, 3, num_items)], rng.integers(0, len(BRANDS), num_items))
    ranks = rng.permutation(num_items) + 1
    log_pop = -1.1 * np.log(ranks)
    text = [_item_text(rng, int(leaf[i]), factors[i], BRANDS[brand[i]], i) for i in range(num_items)]
    return factors, log_pop, text


def _sequences(
    rng: np.random.Generator,
    factors: np.ndarray,
    log_pop: np.ndarray,
    num_users: int,
    mean_len: float,
    min_len: int,
    temperature: float,
) -> list[list[int]]:
    num_items = factors.shape[0]
    anchors = factors[rng.integers(0, num_items, (num_users, 2))]
    mix = rng.random((num_users, 1))
    users = mix * anchors[:, 0] + (1 - mix) * anchors[:, 1] + rng.normal(0.0, 0.3, (num_users, DIM))
    drift = rng.normal(0.0, 1.0, (num_users, DIM))
    extra = max(mean_len - min_len, 0.0)
    lengths = np.minimum(min_len + rng.poisson(extra, num_users), num_items)
    out: list[list[int]] = []
    for start in range(0, num_users, 1024):
        stop = min(start + 1024, num_users)
        logits = users[start:stop] @ factors.T / temperature + log_pop
        keys = logits + rng.gumbel(size=logits.shape)  # Gumbel top-k = sampling without replacement
        chosen = np.argsort(-keys, axis=1, kind="stable")
        for r in range(stop - start):
            picked = chosen[r, : lengths[start + r]]
            when = factors[picked] @ drift[start + r] + rng.normal(0.0, 0.5, picked.size)
            out.append(picked[np.argsort(when, kind="stable")].tolist())
    return out


def synthetic_raw(
    num_users: int = 600,
    num_items: int = 400,
    seed: int = 0,
    mean_len: float = 10.0,
    min_len: int = 5,
    temperature: float = 0.7,
) -> tuple[dict[str, list[int]], dict[str, dict[str, str]]]:
    """Generate the raw LC-Rec dictionaries ``(inter, item)`` of the synthetic data set.

    ``inter`` is ``{"u": [item ids, chronological]}`` with every user having ``>= min_len`` distinct
    items; ``item`` is ``{"i": {title, description, brand, categories}}`` for every item ``0..num_items-1``.
    Same arguments -> same output.
    """
    if num_users <= 0:
        raise ValueError(f"num_users must be > 0, got {num_users}")
    if min_len <= 0:
        raise ValueError(f"min_len must be > 0, got {min_len}")
    if num_items < min_len:
        raise ValueError(f"num_items must be >= min_len={min_len}, got {num_items}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if mean_len < min_len:
        raise ValueError(f"mean_len must be >= min_len={min_len}, got {mean_len}")
    rng = np.random.default_rng(seed)
    factors, log_pop, text = _items(rng, num_items)
    seqs = _sequences(rng, factors, log_pop, num_users, mean_len, min_len, temperature)
    inter = {str(u): s for u, s in enumerate(seqs)}
    items = {str(i): {k: t[k] for k in TEXT_FIELDS} for i, t in enumerate(text)}
    return inter, items


def synthetic(
    folder: str | Path | None = None,
    num_users: int = 600,
    num_items: int = 400,
    seed: int = 0,
    name: str = "Synthetic",
    mean_len: float = 10.0,
    min_len: int = 5,
) -> Path | Interactions:
    """The project's embedded default data set, generated deterministically from ``seed``.

    Defaults: 600 users, 400 items, ~10 interactions per user, every user ``>= 5``.
    See the module docstring for how items, text and interactions are generated.

    Args:
        folder: when given, write ``<name>.inter.json`` and ``<name>.item.json`` there (LC-Rec layout,
            created if missing) and return the folder; identical arguments give byte-identical files.
            When None, return the data set as :class:`Interactions`.
        num_users, num_items: sizes.
        seed: random seed.
        name: data set name (file prefix).
        mean_len, min_len: mean and minimum sequence length.
    """
    inter, items = synthetic_raw(num_users, num_items, seed, mean_len, min_len)
    if folder is None:
        data = from_sequences(inter, item_vocab=items, name=name)
        data.item_text = {data.item_map[k]: v for k, v in items.items()}
        return data
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.inter.json", "w", encoding="utf-8", newline="\n") as f:
        json.dump(inter, f)
    with open(folder / f"{name}.item.json", "w", encoding="utf-8", newline="\n") as f:
        json.dump(items, f, indent=4, ensure_ascii=False)
    return folder
