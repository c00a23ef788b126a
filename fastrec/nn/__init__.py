"""fastrec.nn: drop-in modules built on fastrec ops."""

from fastrec.nn.cf import MF, LightGCN, bce_loss, bpr_loss, load_checkpoint, save_checkpoint
from fastrec.nn.collab import CollabTokenEmbedding, GatedProjection, HybridProjection
from fastrec.nn.embedding_optim import SparseOptimEmbedding
from fastrec.nn.fusion import IDEmbedding, SemanticFusionEmbedding, reduction_init
from fastrec.nn.rqvae import RQVAE, ResidualQuantizer, kmeans
from fastrec.nn.sasrec import SASRec
from fastrec.nn.sequential import BERT4Rec, GRU4Rec, full_softmax_loss

__all__ = [
    "MF", "LightGCN", "bce_loss", "bpr_loss", "load_checkpoint", "save_checkpoint",
    "CollabTokenEmbedding", "GatedProjection", "HybridProjection",
    "IDEmbedding", "SASRec", "SemanticFusionEmbedding", "SparseOptimEmbedding", "reduction_init",
    "BERT4Rec", "GRU4Rec", "full_softmax_loss",
    "RQVAE", "ResidualQuantizer", "kmeans",
]
