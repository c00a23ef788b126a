"""Reference uniform semantic mapping (LC-Rec's Sinkhorn-Knopp on the last RQ-VAE level), written as
LC-Rec writes it: distances rescaled to [-1, 1], float64, rows then columns normalised `iters` times."""

from __future__ import annotations

import torch


def sinkhorn_assign(distances: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """distances [N, K] -> code index [N] (int64): argmax of each row of the balanced transport plan."""
    if distances.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=distances.device)
    d = distances.double()
    middle = (d.max() + d.min()) / 2
    amplitude = d.max() - middle + 1e-5
    d = (d - middle) / amplitude
    q = torch.exp(-d / epsilon)
    n, k = q.shape
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(dim=1, keepdim=True) / n
        q = q / q.sum(dim=0, keepdim=True) / k
    return torch.argmax(q * n, dim=1)
