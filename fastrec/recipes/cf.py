"""Train and evaluate the collaborative models (MF, LightGCN) with full-ranking evaluation.

    fastrec lightgcn train --data ../shared/data/amazon-instruments --model lightgcn --out results/lightgcn
    fastrec lightgcn eval  --data ... --checkpoint results/lightgcn/lightgcn.safetensors

Training: BPR (or BCE) on uniformly sampled unseen negatives, Adam, L2 on the batch's layer-0 vectors
(LightGCN's regulariser); after every epoch the validation NDCG@10 (full ranking, train items excluded)
decides early stopping, and the best weights are saved as safetensors. The loop runs on the fastrec.train
engine (accelerate), so `--device`, `--dtype`, `--save-every`, `--resume` work, and `torchrun` or
`accelerate launch` trains on several processes with no code change: each process takes its shard of
every global batch (`--batch-size` per process) and the gradients are averaged.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastrec import train as engine_lib
from fastrec.data import InteractionGraph, LeaveOneOutSplit, leave_one_out, load_lcrec, sample_negatives, synthetic
from fastrec.eval import full_ranking
from fastrec.nn.cf import MF, LightGCN, bce_loss, bpr_loss, load_checkpoint, save_checkpoint

__all__ = ["TrainConfig", "train", "evaluate", "popularity_baseline", "build_model", "add_parser"]


@dataclass
class TrainConfig(engine_lib.TrainConfig):
    """The engine's fields (fastrec.train.TrainConfig) with LightGCN's defaults, plus the CF-only ones."""

    epochs: int = 50
    batch_size: int = 2048  # per process
    lr: float = 1e-3
    max_grad_norm: float | None = None
    patience: int | None = 5  # epochs without a better validation NDCG@10
    reg: float = 1e-4  # L2 on the batch's layer-0 vectors, divided by the batch size
    loss: str = "bpr"  # or "bce"
    num_neg: int = 1
    ks: tuple[int, ...] = (10, 20)


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
    dev = users.device
    seen = tuple(t.to(dev) for t in split.seen(stage))
    return full_ranking(users, items, seen, targets.to(dev), ks=ks, users=eval_users.to(dev))


def popularity_baseline(split: LeaveOneOutSplit, stage: str = "test", ks: tuple[int, ...] = (10, 20)) -> dict:
    """Rank items by train popularity (ties by lower id), seen items excluded: the floor to beat."""
    _, items = split.train.pairs()
    pop = torch.bincount(items, minlength=split.data.num_items).float()[:, None]
    ones = torch.ones(split.data.num_users, 1)
    targets = split.valid_targets if stage == "valid" else split.test_targets
    users = split.valid_users if stage == "valid" else split.test_users
    return full_ranking(ones, pop, split.seen(stage), targets, ks=ks, users=users)


def _batch_loss(model, users, pos, neg, cfg: TrainConfig) -> torch.Tensor:
    """The mean loss of the batch given (plus the L2 term); the forward goes through the (DDP) wrapper."""
    vectors = model()
    core = getattr(model, "module", model)
    loss_fn = bpr_loss if cfg.loss == "bpr" else bce_loss
    loss = loss_fn(core.score(users, pos, vectors), core.score(users, neg, vectors))
    if cfg.reg:
        ego_u, ego_p = core.ego(users, pos)
        ego_n = core.embedding(neg + core.num_users)
        l2 = ego_u.pow(2).sum() + ego_p.pow(2).sum() + ego_n.pow(2).sum()
        loss = loss + cfg.reg * l2 / (2 * max(users.shape[0], 1))
    return loss


def _epoch_negatives(users: torch.Tensor, graph: InteractionGraph, num_items: int, cfg: TrainConfig,
                     epoch: int) -> torch.Tensor:
    """Negatives of every train pair for `epoch`, drawn from (seed, epoch) alone: every process, any number
    of processes and a resumed run see the same ones."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    n = sample_negatives(users, graph.seen_indptr, graph.seen_indices, num_items, cfg.num_neg, gen)
    return n[:, 0] if cfg.num_neg == 1 else n


def train(model: torch.nn.Module, split: LeaveOneOutSplit, cfg: TrainConfig | None = None,
          checkpoint: str | Path | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """Train ``model`` (MF or LightGCN) in place on the engine, early stopping on valid NDCG@10.

    Each epoch shuffles the train pairs (seeded) into batches of ``cfg.batch_size`` per process, dropping
    the last partial global batch so that every step has the same global batch on any number of processes.
    The best weights are restored at the end and, when ``checkpoint`` is given, saved there whenever they
    improve (main process, atomically). ``out`` is the run folder for metrics.jsonl and engine checkpoints
    (``cfg.save_every``, ``cfg.resume``).

    Returns:
        ``{"best_epoch", "best_valid", "history": [{"epoch", "loss", "NDCG@10", ...}]}``.
    """
    cfg = cfg or TrainConfig()
    if cfg.loss not in ("bpr", "bce"):
        raise ValueError(f"loss must be 'bpr' or 'bce', got {cfg.loss!r}")
    engine = engine_lib.Engine(cfg, out=out)
    core = getattr(model, "module", model)
    graph = InteractionGraph.from_split(split)
    users_cpu, items_cpu = split.train.pairs()
    n = users_cpu.numel()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(n)), batch_size=cfg.batch_size,
                                         shuffle=True, drop_last=n >= cfg.batch_size * engine.world_size)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model, opt, loader = engine.prepare(model, opt, loader)
    users_all, items_all = users_cpu.to(engine.device), items_cpu.to(engine.device)
    best_state, best_epoch, history = None, -1, []
    if engine.resume() is not None and checkpoint is not None and Path(checkpoint).is_file():
        saved, extra = load_checkpoint(checkpoint, graph=graph)
        best_state, best_epoch = saved.state_dict(), extra.get("best_epoch", -1)
    for epoch in engine.epochs():
        negs = _epoch_negatives(users_cpu, graph, core.num_items, cfg, epoch).to(engine.device)
        model.train()
        total, steps = 0.0, 0
        for (idx,) in engine.batches(loader):
            loss = _batch_loss(model, users_all[idx], items_all[idx], negs[idx], cfg)
            engine.step(loss, opt)
            total, steps = total + float(loss.detach()), steps + 1
        metrics = evaluate(model, split, "valid", cfg.ks)
        row = {"epoch": epoch, "loss": total / max(steps, 1), **metrics}
        history.append(row)
        if cfg.progress:
            engine.print(f"epoch {epoch}: loss {row['loss']:.4f} valid NDCG@10 {metrics['NDCG@10']:.4f} "
                         f"HR@10 {metrics['HR@10']:.4f}")
        if engine.end_epoch(row, monitor="NDCG@10"):
            best_epoch = epoch
            best_state = {k: v.detach().clone() for k, v in core.state_dict().items()}
            if checkpoint is not None and engine.is_main:
                save_checkpoint(core, checkpoint, {"best_epoch": best_epoch, "best_valid_ndcg10": engine.best,
                                                   "train_config": cfg.to_dict()})
    if best_state is not None:
        core.load_state_dict(best_state)
    engine.wait()
    best = engine.best if engine.best is not None else -math.inf
    return {"best_epoch": best_epoch, "best_valid": best, "history": history}


# --------------------------------------------------------------------------------------------- CLI


def _load_split(args: argparse.Namespace) -> LeaveOneOutSplit:
    if args.data:
        return leave_one_out(load_lcrec(args.data))
    return leave_one_out(synthetic(num_users=args.synthetic_users, num_items=args.synthetic_items, seed=0))


def _cmd_train(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    split = _load_split(args)
    torch.manual_seed(args.seed)
    model = build_model(args.model, split, args.dim, args.layers)
    cfg = engine_lib.config_from_args(args, cls=TrainConfig)
    out = Path(args.out)
    ckpt = out / f"{args.model}.safetensors"
    result = train(model, split, cfg, ckpt, out=out)
    if PartialState().is_main_process:
        test = evaluate(model, split, "test")
        pop = popularity_baseline(split, "test")
        summary = {"model": args.model, "best_epoch": result["best_epoch"], "valid_NDCG@10": result["best_valid"],
                   "test": test, "popularity_test": pop, "checkpoint": str(ckpt)}
        (out / f"{args.model}.json").write_text(json.dumps(summary, indent=2))
        _plot_history(result["history"], out / f"{args.model}_valid.png", args.model)
        print(json.dumps(summary, indent=2))
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
        a.add_argument("--reg", type=float, default=1e-4)
        a.add_argument("--loss", choices=("bpr", "bce"), default="bpr")
        a.add_argument("--out", default="results/lightgcn")
        engine_lib.add_training_args(a, epochs=50, batch_size=2048, lr=1e-3, patience=5, max_grad_norm=None)
