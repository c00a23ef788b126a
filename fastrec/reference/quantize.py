"""Reference residual quantization: nearest code by brute-force squared distance, greedy levels."""

from __future__ import annotations

import torch


def nearest_code(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest code of every row of `x` and its squared distance (fp32).

    Ties go to the lowest index (torch.argmin returns the first minimum). Rows are taken in chunks
    so that the [rows, K, D] difference tensor stays near 64 MB.
    """
    codebook = codebook.float()
    chunk = max(1, (1 << 24) // max(1, codebook.numel()))
    indices, dists = [], []
    for part in x.float().split(chunk) if x.shape[0] else [x.float()]:
        dist = (part[:, None, :] - codebook[None, :, :]).pow(2).sum(-1)
        index = dist.argmin(dim=1)
        indices.append(index)
        dists.append(dist.gather(1, index[:, None]).squeeze(1))
    return torch.cat(indices), torch.cat(dists)


def residual_encode(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy residual quantization over the levels of `codebooks` [L, K, D].

    Returns codes [N, L] and quantized [N, D] (the sum of the chosen codes, in x's dtype).
    """
    residual = x.float()
    quantized = torch.zeros_like(residual)
    codes = []
    for level in codebooks.float():
        index, _ = nearest_code(residual, level)
        chosen = level[index]
        residual = residual - chosen
        quantized = quantized + chosen
        codes.append(index)
    return torch.stack(codes, dim=1), quantized.to(x.dtype)
