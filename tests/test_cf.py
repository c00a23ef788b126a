"""MF / LightGCN modules, losses, checkpoints, the trainer (early stopping), and DDP under torchrun."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastrec.data import InteractionGraph, leave_one_out, synthetic
from fastrec.nn import MF, LightGCN, bce_loss, bpr_loss, load_checkpoint, save_checkpoint
from fastrec.recipes.cf import TrainConfig, build_model, evaluate, popularity_baseline, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def split():
    return leave_one_out(synthetic(num_users=120, num_items=80, seed=1, mean_len=8.0))


def test_lightgcn_forward_is_mean_of_dense_layers(split):
    g = InteractionGraph.from_split(split)
    model = LightGCN(split.data.num_users, split.data.num_items, dim=8, num_layers=2, graph=g)
    assert model.graph_indices.dtype == torch.int32
    users, items = model()
    a, e = g.to_dense().double(), model.embedding.weight.detach().double()
    expect = ((e + a @ e + a @ (a @ e)) / 3).float()
    torch.testing.assert_close(torch.cat([users, items]).detach(), expect, rtol=1e-5, atol=1e-6)
    # gradient of a score reaches the embedding of a neighbour's neighbour (through the graph)
    model.score(torch.tensor([0]), torch.tensor([0])).sum().backward()
    grad = model.embedding.weight.grad
    manual = torch.zeros_like(grad, dtype=torch.float64)
    w = torch.zeros(g.num_nodes, g.num_nodes, dtype=torch.float64)
    w += (torch.eye(g.num_nodes, dtype=torch.float64) + a + a @ a) / 3
    u0, i0 = expect[0].double(), expect[split.data.num_users].double()
    manual += w[0][:, None] * i0[None] + w[split.data.num_users][:, None] * u0[None]
    torch.testing.assert_close(grad.double(), manual, rtol=1e-4, atol=1e-6)


def test_mf_and_scores():
    m = MF(5, 7, dim=4)
    u, i = m()
    assert u.shape == (5, 4) and i.shape == (7, 4)
    s = m.score(torch.tensor([1, 2]), torch.tensor([[0, 3], [6, 6]]))
    torch.testing.assert_close(s, torch.stack([i[[0, 3]] @ u[1], i[[6, 6]] @ u[2]]))


def test_losses():
    pos, neg = torch.tensor([2.0, -1.0]), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(bpr_loss(pos, neg), -torch.nn.functional.logsigmoid(pos - neg).mean())
    expect = torch.nn.functional.binary_cross_entropy_with_logits(pos, torch.ones(2)) + \
        torch.nn.functional.binary_cross_entropy_with_logits(neg, torch.zeros(2))
    torch.testing.assert_close(bce_loss(pos, neg), expect)
    torch.testing.assert_close(bpr_loss(pos, neg[:, None].repeat(1, 3)), bpr_loss(pos, neg))


def test_bad_model_arguments(split):
    with pytest.raises(ValueError, match="num_users"):
        MF(0, 3)
    with pytest.raises(ValueError, match="num_layers"):
        LightGCN(3, 3, num_layers=-1)
    with pytest.raises(ValueError, match="nodes"):
        LightGCN(3, 3, graph=InteractionGraph.from_split(split))
    with pytest.raises(RuntimeError, match="no graph"):
        LightGCN(3, 3)()
    with pytest.raises(ValueError, match="model"):
        build_model("gru", split)


def test_checkpoint_round_trip(tmp_path, split):
    g = InteractionGraph.from_split(split)
    model = LightGCN(split.data.num_users, split.data.num_items, dim=8, num_layers=2, graph=g)
    path = save_checkpoint(model, tmp_path / "m.safetensors", {"note": "x"})
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind
    loaded, extra = load_checkpoint(path, graph=g)
    assert extra == {"note": "x"} and isinstance(loaded, LightGCN) and loaded.num_layers == 2
    for a, b in zip(model(), loaded(), strict=True):
        torch.testing.assert_close(a, b)
    mf = MF(4, 6, dim=3)
    loaded, _ = load_checkpoint(save_checkpoint(mf, tmp_path / "mf.safetensors"))
    torch.testing.assert_close(loaded.embedding.weight, mf.embedding.weight)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_training_learns_and_beats_popularity(split, tmp_path):
    torch.manual_seed(0)
    model = build_model("lightgcn", split, dim=16, num_layers=2)
    before = evaluate(model, split, "valid")["NDCG@10"]
    cfg = TrainConfig(epochs=12, batch_size=256, lr=1e-2, patience=12, progress=False)
    result = train(model, split, cfg, tmp_path / "lgcn.safetensors")
    hist = result["history"]
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert result["best_valid"] > before + 0.05
    # the restored weights are the best epoch's
    assert evaluate(model, split, "valid")["NDCG@10"] == pytest.approx(result["best_valid"])
    assert evaluate(model, split, "test")["NDCG@10"] > popularity_baseline(split, "test")["NDCG@10"]
    loaded, extra = load_checkpoint(tmp_path / "lgcn.safetensors", graph=InteractionGraph.from_split(split))
    assert extra["best_epoch"] == result["best_epoch"]


def test_early_stopping_stops(split):
    model = build_model("mf", split, dim=8)
    cfg = TrainConfig(epochs=50, batch_size=512, lr=0.0, patience=2, progress=False)
    result = train(model, split, cfg)
    assert len(result["history"]) == 3 and result["best_epoch"] == 0  # no change after epoch 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_gloo_ranks_match_single_process(tmp_path):
    """The engine under torchrun: 2 gloo processes x batch 50 == 1 process x batch 50 x 2 (the same global
    batches and negatives), weights to rtol 1e-4 / atol 1e-5."""
    args = ["lightgcn", "train", "--synthetic-users", "90", "--synthetic-items", "60", "--model", "lightgcn",
            "--dim", "8", "--layers", "2", "--epochs", "2", "--lr", "0.01", "--patience", "5", "--device", "cpu",
            "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    single = subprocess.run([sys.executable, "-m", "fastrec", *args, "--batch-size", "100",
                             "--out", str(tmp_path / "single")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                          "-m", "fastrec", *args, "--batch-size", "50", "--out", str(tmp_path / "ddp")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "single" / "lightgcn.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "lightgcn.safetensors"))
    torch.testing.assert_close(a["embedding.weight"], b["embedding.weight"], rtol=1e-4, atol=1e-5)
    ja = json.loads((tmp_path / "single" / "lightgcn.json").read_text())
    jb = json.loads((tmp_path / "ddp" / "lightgcn.json").read_text())
    assert ja["best_epoch"] == jb["best_epoch"]
    assert ja["test"]["NDCG@10"] == pytest.approx(jb["test"]["NDCG@10"], abs=1e-3)
