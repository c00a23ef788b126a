"""LC-Rec's RQ-VAE: an MLP auto-encoder whose latent is quantized by a residual quantizer.

`ResidualQuantizer` finds codes with the fused `fastrec.ops.residual_encode` (greedy levels) and, on the
levels with a positive Sinkhorn epsilon, with `fastrec.ops.sinkhorn_assign` (LC-Rec's uniform semantic
mapping); it returns the straight-through quantized latent and LC-Rec's loss (codebook + beta *
commitment, averaged over levels). Codebooks are initialised by k-means, level by level, on the first
training batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastrec.ops import nearest_code, residual_encode, sinkhorn_assign


def kmeans(x: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means with `nearest_code` as the assignment step; empty clusters keep their centre."""
    x = x.float()
    n = x.shape[0]
    if n == 0:
        raise ValueError("kmeans needs at least one row")
    pick = torch.randperm(n, generator=generator)[:k] if n >= k else torch.randint(n, (k,), generator=generator)
    centers = x[pick].clone()
    if n < k:  # fewer rows than codes: jitter the repeats so that codes stay distinct
        centers += 1e-3 * x.std().clamp_min(1e-6) * torch.randn(centers.shape, generator=generator)
    for _ in range(iters):
        index, _ = nearest_code(x, centers)
        onehot = F.one_hot(index, k).to(x.dtype)  # a GEMM: CPU index_add_ into few rows serialises
        sums = onehot.t() @ x
        counts = onehot.sum(0)
        filled = counts > 0
        centers[filled] = sums[filled] / counts[filled, None]
    return centers


class ResidualQuantizer(nn.Module):
    """Residual vector quantizer with LC-Rec's losses, k-means init and Sinkhorn levels.

    Args:
        levels, codebook_size, dim: L codebooks of K codes of width D.
        beta: commitment weight.
        kmeans_init: initialise the codebooks by k-means on the first training batch (else uniform
            in [-1/K, 1/K] as LC-Rec's nn.Embedding init).
        sinkhorn_epsilon: per level; a positive value makes that level use the uniform mapping.
        sinkhorn_iters: Sinkhorn-Knopp iterations.
    """

    def __init__(self, levels: int = 4, codebook_size: int = 256, dim: int = 32, beta: float = 0.25,
                 kmeans_init: bool = True, sinkhorn_epsilon: Sequence[float] = (0.0, 0.0, 0.0, 0.003),
                 sinkhorn_iters: int = 50, kmeans_iters: int = 10) -> None:
        super().__init__()
        if levels < 1 or codebook_size < 1 or dim < 1:
            raise ValueError("levels, codebook_size and dim must be positive")
        if len(sinkhorn_epsilon) != levels:
            raise ValueError(f"sinkhorn_epsilon needs one value per level ({levels}), got {len(sinkhorn_epsilon)}")
        self.levels, self.codebook_size, self.dim, self.beta = levels, codebook_size, dim, beta
        self.sinkhorn_epsilon = tuple(float(e) for e in sinkhorn_epsilon)
        self.sinkhorn_iters, self.kmeans_iters = sinkhorn_iters, kmeans_iters
        self.codebooks = nn.Parameter(torch.empty(levels, codebook_size, dim).uniform_(-1 / codebook_size,
                                                                                        1 / codebook_size))
        self.register_buffer("initted", torch.tensor(not kmeans_init))

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor) -> None:
        """k-means per level on `x` and then on the residual each level leaves (LC-Rec's first-batch init)."""
        residual = x.detach().float()
        for level in range(self.levels):
            centers = kmeans(residual, self.codebook_size, self.kmeans_iters)
            self.codebooks[level] = centers.to(self.codebooks.dtype)
            index, _ = nearest_code(residual, centers)
            residual = residual - centers[index]
        self.initted.fill_(True)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, use_sinkhorn: bool = True,
               sinkhorn_epsilon: Sequence[float] | None = None) -> torch.Tensor:
        """Codes [N, L] of x [N, D]: greedy fused search, Sinkhorn on the levels whose epsilon is > 0."""
        eps = self.sinkhorn_epsilon if sinkhorn_epsilon is None else tuple(sinkhorn_epsilon)
        cb = self.codebooks.detach()
        x = x.detach().to(cb.dtype)
        codes = torch.empty(x.shape[0], self.levels, dtype=torch.int64, device=x.device)
        residual, start = x, 0
        for level in range(self.levels + 1):
            sk = level < self.levels and use_sinkhorn and eps[level] > 0
            if level < self.levels and not sk:
                continue
            if level > start:  # the greedy levels [start, level) in one fused call
                seg_codes, seg_q = residual_encode(residual, cb[start:level])
                codes[:, start:level] = seg_codes
                residual = residual - seg_q
            if sk:
                c = cb[level].float()
                r = residual.float()
                d = r.pow(2).sum(1, keepdim=True) + c.pow(2).sum(1)[None] - 2 * r @ c.t()
                codes[:, level] = sinkhorn_assign(d, eps[level], self.sinkhorn_iters)
                residual = residual - cb[level][codes[:, level]]
                start = level + 1
        return codes

    def forward(self, x: torch.Tensor, use_sinkhorn: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, D] -> (straight-through quantized x [N, D], loss, codes [N, L])."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be [N, {self.dim}], got {tuple(x.shape)}")
        if self.training and not bool(self.initted):
            self.init_codebooks(x)
        codes = self.encode(x, use_sinkhorn)
        chosen = self.codebooks[torch.arange(self.levels, device=x.device)[:, None], codes.t()]  # [L, N, D]
        before = torch.cumsum(chosen.detach(), 0) - chosen.detach()  # sum of the earlier levels' codes
        # level 0 sees x itself; LC-Rec's later residuals carry no gradient (x_q - x is detached there)
        residuals = torch.cat([x[None], (x[None] - before[1:]).detach()], 0)
        codebook_loss = F.mse_loss(chosen, residuals.detach(), reduction="none").mean(dim=(1, 2))
        commit_loss = F.mse_loss(chosen.detach(), residuals, reduction="none").mean(dim=(1, 2))
        loss = (codebook_loss + self.beta * commit_loss).mean()
        quantized = chosen.sum(0)
        return x + (quantized - x).detach(), loss, codes


def _mlp(sizes: Sequence[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """LC-Rec's RQ-VAE: MLP encoder in_dim -> hidden... -> code_dim, residual quantizer, mirror decoder.

    `forward(x)` returns (reconstruction, quantizer loss, codes); `loss(x)` the total LC-Rec loss
    (reconstruction MSE + quant_weight * quantizer loss) with its parts; `encode(x)` the codes.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int] = (2048, 1024, 512, 256, 128, 64), code_dim: int = 32,
                 levels: int = 4, codebook_size: int = 256, beta: float = 0.25, dropout: float = 0.0,
                 kmeans_init: bool = True, sinkhorn_epsilon: Sequence[float] | None = None,
                 sinkhorn_iters: int = 50, quant_weight: float = 1.0) -> None:
        super().__init__()
        if sinkhorn_epsilon is None:
            sinkhorn_epsilon = (0.0,) * (levels - 1) + (0.003,)
        self.in_dim, self.code_dim, self.quant_weight = in_dim, code_dim, quant_weight
        sizes = [in_dim, *hidden, code_dim]
        self.encoder = _mlp(sizes, dropout)
        self.quantizer = ResidualQuantizer(levels, codebook_size, code_dim, beta, kmeans_init, sinkhorn_epsilon,
                                           sinkhorn_iters)
        self.decoder = _mlp(sizes[::-1], dropout)

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"x must be a tensor [N, {self.in_dim}], got {getattr(x, 'shape', type(x))}")

    def forward(self, x: torch.Tensor, use_sinkhorn: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._check(x)
        quantized, rq_loss, codes = self.quantizer(self.encoder(x), use_sinkhorn)
        return self.decoder(quantized), rq_loss, codes

    def loss(self, x: torch.Tensor, use_sinkhorn: bool = True) -> dict[str, torch.Tensor]:
        recon, rq_loss, codes = self(x, use_sinkhorn)
        recon_loss = F.mse_loss(recon, x)
        return {"loss": recon_loss + self.quant_weight * rq_loss, "recon": recon_loss, "rq": rq_loss, "codes": codes}

    @torch.no_grad()
    def latent(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.encoder(x)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, use_sinkhorn: bool = False,
               sinkhorn_epsilon: Sequence[float] | None = None) -> torch.Tensor:
        """Codes [N, L] (no Sinkhorn by default, as LC-Rec's first indexing pass)."""
        return self.quantizer.encode(self.latent(x), use_sinkhorn, sinkhorn_epsilon)
