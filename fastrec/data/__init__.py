"""fastrec.data: loaders (LC-Rec JSON, MovieLens-1M, CSV), id remapping, k-core, leave-one-out split,
the normalised interaction graph, negative sampling and the embedded synthetic data set."""

from .graph import InteractionGraph
from .interactions import (
    Interactions,
    LeaveOneOutSplit,
    from_pairs,
    from_sequences,
    k_core,
    leave_one_out,
    remap_ids,
    seen_csr,
)
from .loaders import TEXT_FIELDS, load_csv, load_lcrec, load_movielens
from .sampling import sample_negatives
from .synthetic import synthetic, synthetic_raw
from .text import default_encoder_path, item_texts, load_encoder, text_embeddings

__all__ = [
    "Interactions",
    "LeaveOneOutSplit",
    "InteractionGraph",
    "TEXT_FIELDS",
    "from_pairs",
    "from_sequences",
    "k_core",
    "leave_one_out",
    "load_csv",
    "load_lcrec",
    "load_movielens",
    "remap_ids",
    "sample_negatives",
    "seen_csr",
    "synthetic",
    "synthetic_raw",
    "default_encoder_path",
    "item_texts",
    "load_encoder",
    "text_embeddings",
]
