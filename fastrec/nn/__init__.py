"""fastrec.nn: drop-in modules built on fastrec ops."""

from fastrec.nn.cf import MF, LightGCN, bce_loss, bpr_loss, load_checkpoint, save_checkpoint
from fastrec.nn.collab import CollabTokenEmbedding, GatedProjection, HybridProjection
from fastrec.nn.fusion import IDEmbedding, SemanticFusionEmbedding, reduction_init
from fastrec.nn.rqvae import RQVAE, ResidualQuantizer, kmeans
from fastrec.nn.sasrec import SASRec

__all__ = [
    "MF", "LightGCN", "bce_loss", "bpr_loss", "load_checkpoint", "save_checkpoint",
    "CollabTokenEmbedding", "GatedProjection", "HybridProjection",
    "IDEmbedding", "SASRec", "SemanticFusionEmbedding", "reduction_init",
    "RQVAE", "ResidualQuantizer", "kmeans",
]
