"""fastrec.nn: drop-in modules built on fastrec ops."""

from fastrec.nn.fusion import IDEmbedding, SemanticFusionEmbedding, reduction_init
from fastrec.nn.sasrec import SASRec

__all__ = ["IDEmbedding", "SASRec", "SemanticFusionEmbedding", "reduction_init"]
