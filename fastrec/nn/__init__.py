"""fastrec.nn: drop-in modules built on fastrec ops."""

from fastrec.nn.collab import CollabTokenEmbedding, GatedProjection, HybridProjection

__all__ = ["CollabTokenEmbedding", "GatedProjection", "HybridProjection"]
