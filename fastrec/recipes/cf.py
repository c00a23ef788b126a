"""Train and evaluate the collaborative models (MF, LightGCN) with full-ranking evaluation.

    fastrec lightgcn train --data ../shared/data/amazon-instruments --model lightgcn --out results/lightgcn
    fastrec lightgcn eval  --data ... --checkpoint results/lightgcn/lightgcn.safetensors

Training: BPR (or BCE) on uniformly sampled unseen negatives, Adam, L2 on the batch's layer-0 vectors
(LightGCN's regulariser); after every epoch the validation NDCG@10 (full ranking, train items excluded)
decides early stopping, and the best weights are saved as safetensors. Under ``torchrun`` the model is
wrapped in DistributedDataParallel: every rank draws the same global batch and trains on its slice, so the
averaged gradients equal the single-process ones.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from fastrec.data import InteractionGraph, LeaveOneOutSplit, leave_one_out, load_lcrec, sample_negatives, synthetic
from fastrec.eval import full_ranking
from fastrec.nn.cf import MF, LightGCN, bce_loss, bpr_loss, load_checkpoint, save_checkpoint

__all__ = ["TrainConfig", "train", "evaluate", "popularity_baseline", "build_model", "add_parser"]


@dataclass
class TrainConfig:
    """Training hyper-parameters (LightGCN's defaults where they exist)."""

    epochs: int = 50
    batch_size: int = 2048
    lr: float = 1e-3
    reg: float = 1e-4  # L2 on the batch's layer-0 vectors, divided by the batch size
    loss: str = "bpr"  # or "bce"
    num_neg: int = 1
    patience: int = 5  # epochs without a better validation NDCG@10
    seed: int = 0
    ks: tuple[int, ...] = (10, 20)
    progress: bool = True
    history: list[dict[str, float]] = field(default_factory=list, repr=False)


def build_model(kind: str, split: LeaveOneOutSplit, dim: int = 64, num_layers: int = 3) -> torch.nn.Module:
    """``"mf"`` or ``"lightgcn"`` sized for ``split`` (LightGCN gets the train graph)."""
    data = split.data
    if kind == "mf":
        return MF(data.num_users, data.num_items, dim)
    if kind == "lightgcn":
        return LightGCN(data.num_users, data.num_items, dim, num_layers, graph=InteractionGraph.from_split(split))
    raise ValueError(f"model must be 'mf' or 'lightgcn', got {kind!r}")


def evaluate(model: torch.nn.Module, split: LeaveOneOutSplit, stage: str = "test",
             ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """Full-ranking HR@K / NDCG@K on the valid or test targets, seen items excluded."""
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        users, items = model()
    model.train(was_training)
    targets = split.valid_targets if stage == "valid" else split.test_targets
    eval_users = split.valid_users if stage == "valid" else split.test_users
    return full_ranking(users, items, split.seen(stage), targets, ks=ks, users=eval_users)


def popularity_baseline(split: LeaveOneOutSplit, stage: str = "test", ks: tuple[int, ...] = (10, 20)) -> dict:
    """Rank items by train popularity (ties by lower id), seen items excluded: the floor to beat."""
    _, items = split.train.pairs()
    pop = torch.bincount(items, minlength=split.data.num_items).float()[:, None]
    ones = torch.ones(split.data.num_users, 1)
    targets = split.valid_targets if stage == "valid" else split.test_targets
    users = split.valid_users if stage == "valid" else split.test_users
    return full_ranking(ones, pop, split.seen(stage), targets, ks=ks, users=users)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _batch_loss(model, users, pos, neg, cfg: TrainConfig, scale: float = 1.0) -> torch.Tensor:
    """The batch loss (mean over the samples given) times ``scale``."""
    vectors = model()
    if users.numel() == 0:  # an empty slice still joins DDP's gradient all-reduce, with zeros
        return (vectors[0].sum() + vectors[1].sum()) * 0.0
    core = getattr(model, "module", model)
    pos_s = core.score(users, pos, vectors)
    neg_s = core.score(users, neg, vectors)
    loss = (bpr_loss if cfg.loss == "bpr" else bce_loss)(pos_s, neg_s)
    if cfg.reg:
        ego_u, ego_p = core.ego(users, pos)
        ego_n = core.embedding(neg + core.num_users)
        l2 = ego_u.pow(2).sum() + ego_p.pow(2).sum() + ego_n.pow(2).sum()
        loss = loss + cfg.reg * l2 / (2 * max(users.shape[0], 1))
    return loss * scale


def train(model: torch.nn.Module, split: LeaveOneOutSplit, cfg: TrainConfig | None = None,
          checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Train ``model`` (MF or LightGCN, optionally DDP-wrapped) with early stopping on valid NDCG@10.

    Every rank draws the same global batch from a generator seeded with ``cfg.seed`` and keeps the
    slice ``rank::world``; the loss is the slice mean, and DDP averages the gradients, which is the
    single-process gradient when the slices are equal. The best weights are restored at the end and,
    when ``checkpoint`` is given, saved there (rank 0, atomically).

    Returns:
        ``{"best_epoch", "best_valid", "history": [{"epoch", "loss", "NDCG@10", ...}]}``.
    """
    cfg = cfg or TrainConfig()
    if cfg.loss not in ("bpr", "bce"):
        raise ValueError(f"loss must be 'bpr' or 'bce', got {cfg.loss!r}")
    rank, world = _world()
    core = getattr(model, "module", model)
    users_all, items_all = split.train.pairs()
    graph = InteractionGraph.from_split(split)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    best, best_epoch, best_state, bad = -math.inf, -1, None, 0
    history = []
    steps = math.ceil(users_all.numel() / cfg.batch_size)
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(users_all.numel(), generator=gen)
        total = 0.0
        bar = tqdm(range(steps), desc=f"epoch {epoch}", leave=False, disable=not cfg.progress or rank != 0)
        for step in bar:
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            u, p = users_all[idx], items_all[idx]
            n = sample_negatives(u, graph.seen_indptr, graph.seen_indices, core.num_items, cfg.num_neg, gen)
            n = n[:, 0] if cfg.num_neg == 1 else n
            batch = u.shape[0]
            u, p, n = u[rank::world], p[rank::world], n[rank::world]
            # slices may differ by one sample: weight each rank's mean by its share, so that DDP's
            # average of the rank gradients is exactly the gradient of the global batch mean
            loss = _batch_loss(model, u, p, n, cfg, scale=world * u.shape[0] / batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * batch / (world * max(u.shape[0], 1))
            bar.set_postfix(loss=f"{total / (step + 1):.4f}")
        metrics = evaluate(model, split, "valid", cfg.ks)
        row = {"epoch": epoch, "loss": total / steps, **metrics}
        history.append(row)
        if cfg.progress and rank == 0:
            tqdm.write(f"epoch {epoch}: loss {row['loss']:.4f} valid NDCG@10 {metrics['NDCG@10']:.4f} "
                       f"HR@10 {metrics['HR@10']:.4f}")
        if metrics["NDCG@10"] > best:
            best, best_epoch, bad = metrics["NDCG@10"], epoch, 0
            best_state = {k: v.detach().clone() for k, v in core.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        core.load_state_dict(best_state)
    result = {"best_epoch": best_epoch, "best_valid": best, "history": history}
    if checkpoint is not None and rank == 0:
        save_checkpoint(core, checkpoint, {"best_epoch": best_epoch, "best_valid_ndcg10": best,
                                           "train_config": {k: v for k, v in asdict(cfg).items() if k != "history"}})
    return result


# --------------------------------------------------------------------------------------------- CLI


def _load_split(args: argparse.Namespace) -> LeaveOneOutSplit:
    if args.data:
        return leave_one_out(load_lcrec(args.data))
    return leave_one_out(synthetic(num_users=args.synthetic_users, num_items=args.synthetic_items, seed=0))


def _init_distributed() -> bool:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("gloo")
        return True
    return False


def _cmd_train(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    launched = _init_distributed()
    split = _load_split(args)
    model = build_model(args.model, split, args.dim, args.layers)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if dist.is_initialized() else model
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, reg=args.reg, loss=args.loss,
                      patience=args.patience, seed=args.seed)
    out = Path(args.out)
    ckpt = out / f"{args.model}.safetensors"
    result = train(wrapped, split, cfg, ckpt)
    rank, _ = _world()
    if rank == 0:
        test = evaluate(model, split, "test")
        pop = popularity_baseline(split, "test")
        summary = {"model": args.model, "best_epoch": result["best_epoch"], "valid_NDCG@10": result["best_valid"],
                   "test": test, "popularity_test": pop, "checkpoint": str(ckpt)}
        (out / f"{args.model}.json").write_text(json.dumps(summary, indent=2))
        _plot_history(result["history"], out / f"{args.model}_valid.png", args.model)
        print(json.dumps(summary, indent=2))
    if launched:
        dist.destroy_process_group()
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    split = _load_split(args)
    graph = InteractionGraph.from_split(split)
    model, extra = load_checkpoint(args.checkpoint, graph=graph)
    result = {"checkpoint": args.checkpoint, "test": evaluate(model, split, "test"),
              "valid": evaluate(model, split, "valid"), "popularity_test": popularity_baseline(split, "test")}
    print(json.dumps(result, indent=2))
    return 0


def _plot_history(history: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([h["epoch"] for h in history], [h["NDCG@10"] for h in history], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid NDCG@10")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def demo(out: str | Path, epochs: int = 8) -> dict[str, Any]:
    """The `fastrec demo` step: LightGCN and MF on the embedded synthetic data set vs popularity."""
    split = leave_one_out(synthetic())
    out = Path(out)
    rows = {"popularity": popularity_baseline(split, "test")}
    for kind in ("mf", "lightgcn"):
        torch.manual_seed(0)
        model = build_model(kind, split, dim=32, num_layers=2)
        cfg = TrainConfig(epochs=epochs, batch_size=512, lr=5e-3, patience=3, progress=False)
        train(model, split, cfg, out / f"{kind}.safetensors")
        rows[kind] = evaluate(model, split, "test")
    print("collaborative models on the synthetic data set (test, full ranking, seen excluded):")
    for name, m in rows.items():
        print(f"  {name:<11} HR@10 {m['HR@10']:.4f}  NDCG@10 {m['NDCG@10']:.4f}")
    return rows


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `fastrec lightgcn train|eval`."""
    p = sub.add_parser("lightgcn", help="train / evaluate MF and LightGCN with full-ranking evaluation")
    actions = p.add_subparsers(dest="action", required=True)
    for name, fn in (("train", _cmd_train), ("eval", _cmd_eval)):
        a = actions.add_parser(name)
        a.add_argument("--data", default="", help="LC-Rec folder (*.inter.json); default: the synthetic set")
        a.add_argument("--synthetic-users", type=int, default=600)
        a.add_argument("--synthetic-items", type=int, default=400)
        a.set_defaults(func=fn)
        if name == "eval":
            a.add_argument("--checkpoint", required=True)
            continue
        a.add_argument("--model", choices=("mf", "lightgcn"), default="lightgcn")
        a.add_argument("--dim", type=int, default=64)
        a.add_argument("--layers", type=int, default=3)
        a.add_argument("--epochs", type=int, default=50)
        a.add_argument("--batch-size", type=int, default=2048)
        a.add_argument("--lr", type=float, default=1e-3)
        a.add_argument("--reg", type=float, default=1e-4)
        a.add_argument("--loss", choices=("bpr", "bce"), default="bpr")
        a.add_argument("--patience", type=int, default=5)
        a.add_argument("--seed", type=int, default=0)
        a.add_argument("--out", default="results/lightgcn")
