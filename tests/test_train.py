"""The training engine (fastrec.train): flags, resume gives the same weights as an unbroken run, bf16
autocast on CPU, checkpoint integrity errors that name the file, early stopping, and a 2-process gloo run
that follows the 1-process loss curve with the same global batch."""

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastrec.train import (
    CheckpointError,
    Engine,
    TrainConfig,
    add_training_args,
    config_from_args,
    latest_checkpoint,
    load_model_state,
    verify_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]


def _data(n=40):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    y = (x @ torch.randn(6, 1, generator=g)).squeeze(1)
    return torch.utils.data.TensorDataset(x, y)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))


def _run(out, stop_at=None, resume=None, epochs=3, dtype="fp32"):
    """Train the toy regressor; `stop_at` abandons the run after that optimizer step (a kill)."""
    cfg = TrainConfig(device="cpu", dtype=dtype, batch_size=4, grad_accum=2, lr=1e-2, epochs=epochs, save_every=2,
                      resume=resume, progress=False)
    engine = Engine(cfg, out=out)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    loader = torch.utils.data.DataLoader(_data(), batch_size=cfg.batch_size, shuffle=True)
    dtypes = set()  # the dtype the first layer computes in (accelerate returns fp32 outputs)
    model[0].register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    model, opt, loader, sched = engine.prepare(model, opt, loader, sched)
    engine.resume()
    for _ in engine.epochs():
        for x, y in engine.batches(loader):
            pred = model(x).squeeze(1)
            engine.step(torch.nn.functional.mse_loss(pred.float(), y), opt, sched)
            if stop_at is not None and engine.global_step == stop_at and engine.accelerator.sync_gradients:
                return engine, model, dtypes
        engine.end_epoch({"epoch_done": 1.0})
    return engine, model, dtypes


def test_resume_after_a_kill_gives_the_same_weights(tmp_path):
    full, model_full, _ = _run(tmp_path / "full")
    assert full.global_step == 3 * 5  # 10 batches of 4 per epoch, 2 per optimizer step
    part, _, _ = _run(tmp_path / "part", stop_at=7)  # killed after step 7: the last checkpoint is step 6
    assert latest_checkpoint(tmp_path / "part").name == "step-00000006"
    resumed, model_res, _ = _run(tmp_path / "part", resume="latest")
    assert resumed.global_step == 15
    for a, b in zip(model_full.state_dict().values(), model_res.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the metrics of the resumed steps equal the unbroken run's
    rows = [json.loads(r) for r in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    rows_r = [json.loads(r) for r in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    full_loss = {r["step"]: r["loss"] for r in rows if "loss" in r}
    res_loss = {r["step"]: r["loss"] for r in rows_r[len(rows_r) - len(rows) + 7:] if "loss" in r}
    assert res_loss and all(res_loss[s] == pytest.approx(full_loss[s], abs=0) for s in res_loss)
    # the checkpoint export loads into a bare model
    ckpt = tmp_path / "full" / "checkpoints" / "step-00000014"
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 14
    assert json.loads((ckpt / "config.json").read_text())["train"]["grad_accum"] == 2
    bare = load_model_state(_model(), ckpt / "model")
    assert not torch.equal(bare[0].weight, _model()[0].weight)


def test_bf16_autocast_runs_on_cpu(tmp_path):
    engine, model, dtypes = _run(tmp_path, epochs=1, dtype="bf16")
    assert dtypes == {torch.bfloat16} and engine.global_step == 5
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines() if "loss" in r]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


def test_truncated_or_missing_checkpoint_file_is_named(tmp_path):
    _run(tmp_path, epochs=1)
    ckpt = latest_checkpoint(tmp_path)
    assert verify_checkpoint(ckpt) == ckpt
    weights = ckpt / "model" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated"):
        verify_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model_state(_model(), ckpt / "model")
    with pytest.raises(CheckpointError, match="model.safetensors is truncated"):
        _run(tmp_path, resume=str(ckpt))
    weights.write_bytes(data)
    opt = ckpt / "state" / "optimizer.bin"
    opt.unlink()
    with pytest.raises(CheckpointError, match="optimizer.bin is missing"):
        verify_checkpoint(ckpt)
    (ckpt / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete.*manifest.json"):
        verify_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        _run(tmp_path / "empty", resume="latest")


def test_flags_and_config():
    p = add_training_args(argparse.ArgumentParser(), llm=True, lr=5e-4)
    args = p.parse_args(["--dtype", "bf16", "--grad-accum", "4", "--steps", "10", "--lora", "--lora-targets",
                         "q_proj,v_proj", "--resume", "--max-grad-norm", "0"])
    cfg = config_from_args(args, note="x")
    assert (cfg.dtype, cfg.grad_accum, cfg.steps, cfg.lr, cfg.lora) == ("bf16", 4, 10, 5e-4, True)
    assert cfg.lora_targets == ("q_proj", "v_proj") and cfg.resume == "latest" and cfg.max_grad_norm is None
    assert cfg.extra == {"note": "x"} and json.dumps(cfg.to_dict())
    assert not hasattr(add_training_args(argparse.ArgumentParser()).parse_args([]), "lora")
    with pytest.raises(SystemExit):
        p.parse_args(["--dtype", "fp8"])
    for bad in ({"dtype": "fp8"}, {"device": "tpu"}, {"batch_size": 0}, {"grad_accum": 0}, {"steps": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        add_training_args(argparse.ArgumentParser(), learning_rate=1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            Engine(TrainConfig(device="cuda"))


def test_early_stopping_and_step_budget(tmp_path):
    cfg = TrainConfig(device="cpu", epochs=50, patience=2, progress=False)
    engine = Engine(cfg, out=tmp_path)
    seen = []
    for epoch in engine.epochs():
        seen.append(epoch)
        improved = engine.end_epoch({"NDCG@10": [0.1, 0.3, 0.2, 0.25, 0.4][epoch]}, monitor="NDCG@10")
        assert improved == (epoch in (0, 1))
    assert seen == [0, 1, 2, 3] and engine.best == 0.3 and engine.should_stop
    with pytest.raises(KeyError, match="monitor"):
        engine.end_epoch({"HR@10": 0.1}, monitor="NDCG@10")
    # --steps bounds the run inside an epoch
    engine = Engine(TrainConfig(device="cpu", steps=3, batch_size=4, progress=False))
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(_data(), batch_size=4, shuffle=True)
    model, opt, loader = engine.prepare(model, opt, loader)
    n = 0
    for _ in engine.epochs():
        for x, y in engine.batches(loader):
            engine.step(torch.nn.functional.mse_loss(model(x).squeeze(1), y), opt)
            n += 1
    assert n == 3 and engine.global_step == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(folder: Path) -> list[float]:
    return [json.loads(r)["loss"] for r in (folder / "metrics.jsonl").read_text().splitlines() if '"loss"' in r]


@pytest.mark.slow
def test_two_gloo_processes_follow_the_single_process_loss_curve(tmp_path):
    """SASRec epoch: 2 processes x batch 4 == 1 process x batch 8 (the same global batches): losses to
    rtol 1e-5; weights after 8 Adam steps to atol 2e-4 (Adam rescales the last-bit gradient differences of
    the all-reduce for parameters whose gradients are near zero)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    script = str(ROOT / "tests" / "_engine_sasrec.py")
    one = subprocess.run([sys.executable, script, str(tmp_path / "one"), "8"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), script,
                          str(tmp_path / "two"), "4"], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 8 and a[-1] < a[0]
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=1e-6)
    wa = load_model_state(_sasrec(), tmp_path / "one" / "checkpoints" / "final" / "model")
    wb = load_model_state(_sasrec(), tmp_path / "two" / "checkpoints" / "final" / "model")
    for x, y in zip(wa.state_dict().values(), wb.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=2e-4)


def _sasrec():
    from fastrec.nn.sasrec import SASRec

    return SASRec(40, d=16, num_blocks=1, max_len=8, dropout=0.0)


def test_trainer_arguments_callbacks_and_lora(tmp_path):
    """The same flags drive transformers.Trainer: steps, checkpoints with a manifest, JSON-lines metrics, LoRA."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from fastrec.train import CheckpointManifest, JsonlMetrics, apply_lora, training_arguments

    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    cfg = TrainConfig(device="cpu", dtype="bf16", batch_size=2, steps=3, save_every=2, lr=1e-3, lora=True, lora_r=4,
                      lora_targets=("q_proj", "v_proj"), gradient_checkpointing=True, progress=False)
    model = apply_lora(model, cfg)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) < 1000
    rows = [{"input_ids": list(range(1, 9)), "labels": list(range(1, 9))} for _ in range(8)]
    args = training_arguments(cfg, tmp_path)
    assert (args.per_device_train_batch_size, args.max_steps, args.bf16, args.save_steps) == (2, 3, True, 2)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows,
                                   data_collator=lambda b: {k: torch.tensor([r[k] for r in b]) for k in b[0]},
                                   callbacks=[JsonlMetrics(tmp_path / "metrics.jsonl"),
                                              CheckpointManifest({"index.json": {"0": ["<a_1>"]}})])
    trainer.train()
    ckpt = tmp_path / "checkpoints" / "checkpoint-2"
    assert latest_checkpoint(tmp_path).name == "checkpoint-3" and verify_checkpoint(ckpt)
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "index.json").is_file()
    logged = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3]


def test_loss_forward_exports_the_bare_model_and_resumes(tmp_path):
    from fastrec.nn.sasrec import SASRec
    from fastrec.train import LossForward

    def run(resume=None, stop=None):
        cfg = TrainConfig(device="cpu", batch_size=8, epochs=2, save_every=2, lr=1e-2, resume=resume, progress=False)
        engine = Engine(cfg, out=tmp_path)
        torch.manual_seed(0)
        model = LossForward(SASRec(20, d=8, num_blocks=1, max_len=5, dropout=0.1), "loss")
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        seqs = torch.randint(1, 20, (32, 6), generator=torch.Generator().manual_seed(0))
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(seqs[:, :-1], seqs[:, 1:]),
                                             batch_size=8, shuffle=True)
        model, opt, loader = engine.prepare(model, opt, loader)
        engine.resume()
        for _ in engine.epochs():
            for x, y in engine.batches(loader):
                engine.step(model(x, y), opt)
                if engine.global_step == stop:
                    return engine, model
        return engine, model

    _, full = run()
    full_sd = {k: v.clone() for k, v in full.model.state_dict().items()}
    bare = load_model_state(SASRec(20, d=8, num_blocks=1, max_len=5, dropout=0.1),
                            tmp_path / "checkpoints" / "step-00000008" / "model")
    for k, v in bare.state_dict().items():
        torch.testing.assert_close(v, full_sd[k], rtol=0, atol=0)
    engine, resumed = run(resume=str(tmp_path / "checkpoints" / "step-00000004"))
    assert engine.global_step == 8
    for k, v in resumed.model.state_dict().items():
        torch.testing.assert_close(v, full_sd[k], rtol=0, atol=0)
