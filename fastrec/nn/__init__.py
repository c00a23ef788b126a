from fastrec.nn.rqvae import RQVAE, ResidualQuantizer, kmeans

__all__ = ["RQVAE", "ResidualQuantizer", "kmeans"]
