"""fastrec.nn: drop-in modules built on fastrec ops."""

from fastrec.nn.cf import MF, LightGCN, bce_loss, bpr_loss, load_checkpoint, save_checkpoint
from fastrec.nn.collab import CollabTokenEmbedding, GatedProjection, HybridProjection

__all__ = [
    "MF", "LightGCN", "bce_loss", "bpr_loss", "load_checkpoint", "save_checkpoint",
    "CollabTokenEmbedding", "GatedProjection", "HybridProjection",
]
from fastrec.nn.rqvae import RQVAE, ResidualQuantizer, kmeans

__all__ += ["RQVAE", "ResidualQuantizer", "kmeans"]
