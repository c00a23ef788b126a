"""LC-Rec indexing: train the RQ-VAE on item text embeddings and build semantic IDs with zero collisions.

    model = RQVAE(embeddings.shape[1])
    history = train_rqvae(model, embeddings, epochs=200)
    codes, stats = build_index(model, embeddings)          # codes [N, 4], all rows distinct
    save_index(codes_to_index(codes), "Scientific.index.json")
"""

from __future__ import annotations

import itertools
import math
import time

import torch
from tqdm import tqdm

from fastrec.data.semantic_index import collision_groups
from fastrec.nn.rqvae import RQVAE
from fastrec.ops import sinkhorn_assign


def collision_rate(codes: torch.Tensor) -> float:
    """Share of items whose code row is not unique (1 - distinct rows / items), LC-Rec's metric."""
    if codes.shape[0] == 0:
        return 0.0
    return 1.0 - torch.unique(codes, dim=0).shape[0] / codes.shape[0]


def _check_embeddings(embeddings: torch.Tensor) -> torch.Tensor:
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2 or embeddings.shape[0] == 0:
        raise ValueError("embeddings must be a non-empty 2-D tensor [items, dim]")
    if not bool(torch.isfinite(embeddings).all()):
        bad = torch.nonzero(~torch.isfinite(embeddings).all(1)).flatten()[:5].tolist()
        raise ValueError(f"embeddings contains NaN or Inf (items {bad}...)")
    return embeddings.float()


def train_rqvae(model: RQVAE, embeddings: torch.Tensor, epochs: int = 200, batch_size: int = 1024,
                lr: float = 1e-3, weight_decay: float = 1e-4, warmup_epochs: int = 10, grad_clip: float = 1.0,
                eval_every: int = 10, seed: int = 0, progress: bool = True) -> list[dict]:
    """Train with AdamW, linear warm-up then constant rate, gradient clipping; log loss and collision rate.

    Returns one dict per evaluation: epoch, loss, recon, rq, collision_rate (greedy codes of all items).
    """
    x = _check_embeddings(embeddings)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    warmup = max(1, warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
    history: list[dict] = []
    bar = tqdm(range(epochs), desc="rq-vae", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        totals = {"loss": 0.0, "recon": 0.0, "rq": 0.0}
        for idx in torch.randperm(x.shape[0], generator=g).split(batch_size):
            out = model.loss(x[idx])
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            for k in totals:
                totals[k] += float(out[k].detach()) * len(idx) / x.shape[0]
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            model.eval()
            rate = collision_rate(model.encode(x))
            history.append({"epoch": epoch + 1, **totals, "collision_rate": rate})
            bar.set_postfix(loss=f"{totals['loss']:.4f}", collisions=f"{rate:.4f}")
    model.eval()
    return history


def _fallback(codes: torch.Tensor, latent: torch.Tensor, codebooks: torch.Tensor) -> int:
    """Deterministic last resort for items that still collide (identical texts): every item of a group
    but the lowest id moves to the nearest free code tuple, changing the last level first, then the last
    two, and so on (candidate codes per level in order of distance to the item's residual there).
    Returns how many items moved; afterwards all rows of `codes` are distinct."""
    used = {tuple(r) for r in codes.tolist()}
    levels = codes.shape[1]
    moved = 0
    for group in sorted(collision_groups(codes), key=min):
        for item in sorted(group)[1:]:
            row = codes[item].tolist()
            residual, ranks = latent[item].float(), []
            for lv in range(levels):
                cb = codebooks[lv].float()
                ranks.append(torch.argsort((cb - residual).pow(2).sum(1), stable=True).tolist())
                residual = residual - cb[row[lv]]
            new = None
            for first in range(levels - 1, -1, -1):
                for tail in itertools.product(*ranks[first:]):
                    cand = tuple(row[:first]) + tail
                    if cand not in used:
                        new = cand
                        break
                if new is not None:
                    break
            if new is None:
                raise ValueError("more items than code tuples: the index cannot be made collision-free")
            used.add(new)
            codes[item] = torch.tensor(new)
            moved += 1
    return moved


@torch.no_grad()
def build_index(model: RQVAE, embeddings: torch.Tensor, max_rounds: int = 20, epsilon: float = 0.003,
                fallback: bool = True) -> tuple[torch.Tensor, dict]:
    """Codes [N, L] with zero collisions, as LC-Rec builds them and then some.

    1. greedy codes for all items (no Sinkhorn);
    2. up to `max_rounds` times: re-encode every colliding group with Sinkhorn on the last level
       (`epsilon`, the other levels greedy), which spreads a group over distinct last codes;
    3. what still collides (identical embeddings, e.g. identical texts) goes through a deterministic
       fallback that guarantees distinct rows (`fallback=False` leaves it, as LC-Rec does).
    Returns the codes and stats (initial collision rate, rounds, items moved by the fallback, seconds).
    """
    t0 = time.perf_counter()
    x = _check_embeddings(embeddings)
    model.eval()
    latent = model.latent(x)
    q = model.quantizer
    codes = q.encode(latent, use_sinkhorn=False)
    stats = {"items": x.shape[0], "initial_collision_rate": collision_rate(codes), "rounds": 0}
    # the greedy levels do not depend on the group, so the residual before the last level is computed once
    cb = q.codebooks.detach().float()
    levels = codes.shape[1]
    before_last = latent.float() - sum((cb[lv][codes[:, lv]] for lv in range(levels - 1)),
                                       torch.zeros_like(latent, dtype=torch.float32))
    last = cb[levels - 1]
    for _ in range(max_rounds):
        groups = collision_groups(codes)
        if not groups:
            break
        stats["rounds"] += 1
        for group in groups:
            idx = torch.tensor(group)
            r = before_last[idx]
            d = r.pow(2).sum(1, keepdim=True) + last.pow(2).sum(1)[None] - 2 * r @ last.t()
            codes[idx, levels - 1] = sinkhorn_assign(d, epsilon, q.sinkhorn_iters)
    stats["collision_rate_after_sinkhorn"] = collision_rate(codes)
    stats["fallback_items"] = 0
    if fallback and collision_groups(codes):
        stats["fallback_items"] = _fallback(codes, latent, cb)
    stats["collision_rate"] = collision_rate(codes)
    stats["seconds"] = time.perf_counter() - t0
    return codes, stats
