"""The one training engine of fastrec, built on `accelerate` (and `transformers.Trainer` for causal-LM tuning).

Every recipe's training loop runs here, so device placement, mixed precision, gradient accumulation,
gradient checkpointing, multi-process training (DDP, FSDP, DeepSpeed: `accelerate launch` or `torchrun`,
no code change), seeding, checkpoints and `--resume` behave the same everywhere.

Public API
----------
``TrainConfig``                    the common training fields (a dataclass; `asdict` goes into every checkpoint)
``add_training_args(parser, llm=False, **defaults)``
                                   adds the shared flags to a recipe CLI: --device auto|cpu|cuda, --dtype
                                   fp32|bf16|fp16, --batch-size (per process), --grad-accum, --lr,
                                   --weight-decay, --warmup-steps, --lr-scheduler, --max-grad-norm, --epochs, --steps,
                                   --gradient-checkpointing, --save-every, --resume [PATH], --seed,
                                   --no-progress; with ``llm=True`` also --lora, --lora-r, --lora-alpha,
                                   --lora-dropout, --lora-targets (without --lora: full fine-tuning).
                                   ``defaults`` overrides the flag defaults per recipe (``lr=1e-2``).
``config_from_args(args, cls=TrainConfig)``
                                   a TrainConfig (or a recipe's subclass of it) from the parsed flags
``Engine(cfg, out)``               a hand loop on `accelerate.Accelerator`::

        engine = Engine(cfg, out="runs/x")             # seeds, picks the device, opens runs/x/metrics.jsonl
        model, opt, loader, sched = engine.prepare(model, opt, loader, sched)
        engine.resume()                                 # no-op unless cfg.resume; restores weights, optimizer,
                                                        # scheduler, RNG, step, and the place in the epoch
        for epoch in engine.epochs():                   # stops at --epochs / --steps / early stopping
            for batch in engine.batches(loader):        # skips batches done before a resume; accumulate+autocast;
                loss = model(batch)                     # tqdm on the main process; --save-every checkpoints
                engine.step(loss, opt, sched)           # backward, clip, optimizer and scheduler step, zero_grad
            engine.end_epoch({"NDCG@10": ...}, monitor="NDCG@10")   # JSON line; early stopping (cfg.patience)
        engine.save_checkpoint()                        # atomically: RUN/checkpoints/step-N (see below)

    Properties: ``device``, ``is_main``, ``world_size``, ``rank``, ``global_step`` (optimizer steps done),
    ``epoch``, ``should_stop``, ``best`` (best monitored value); ``unwrap(model)``, ``log(dict)``,
    ``autocast()``, ``gather(t)``, ``reduce(t)``, ``wait()``, ``print(...)`` (main process only).
    ``--batch-size`` is per process: the global batch is batch_size x grad_accum x processes, as in HF.
    Call the model (its ``forward``) inside the loop, not another method: DDP syncs gradients through
    ``forward``. ``LossForward(model, "loss")`` turns a ``model.loss(...)`` method into a forward.
``training_arguments(cfg, out, **overrides)``
                                   the same flags as `transformers.TrainingArguments` (per-device batch, bf16
                                   / fp16, use_cpu, gradient checkpointing, save_steps, seed, logging every
                                   step, no reporting); use it with ``transformers.Trainer`` plus the callbacks
                                   ``JsonlMetrics(path)`` (metrics.jsonl) and ``CheckpointManifest()``.
``apply_lora(model, cfg)``         peft LoRA (cfg.lora_r/alpha/dropout/targets) when cfg.lora, else the model
``save_model(model, folder, tokenizer=None, state_dict=None)``
                                   HF / PEFT models: ``save_pretrained`` (safetensors; an adapter for PEFT);
                                   plain nn.Modules: ``model.safetensors``; plus the tokenizer
``load_model_state(model, folder)``  loads ``model.safetensors`` of a plain module (errors name the file)
``write_manifest(folder)`` / ``verify_checkpoint(folder)`` / ``latest_checkpoint(run)`` / ``resolve_resume(value, out)``
                                   every checkpoint carries ``manifest.json`` (name and size of each file);
                                   a missing manifest means an incomplete checkpoint, a missing or shorter
                                   file raises ``CheckpointError`` naming that file.

Checkpoint layout (``Engine.save_checkpoint``): ``RUN/checkpoints/step-00000040/`` with ``state/``
(``accelerator.save_state``: weights, optimizer, scheduler, RNG of every process, sampler), ``model/``
(the export: ``save_pretrained`` or ``model.safetensors``), ``tokenizer/`` (when given), ``config.json``
(the TrainConfig and the run's extra config), ``trainer_state.json`` (step, epoch, batches done in the
epoch), any extra files (an index JSON) and ``manifest.json``. It is written into ``.tmp-step-...`` and
renamed by the main process once every process has written its part.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

__all__ = [
    "TrainConfig", "add_training_args", "config_from_args", "Engine", "LossForward", "CheckpointError",
    "training_arguments", "JsonlMetrics", "CheckpointManifest", "apply_lora", "save_model", "load_model_state",
    "write_manifest", "verify_checkpoint", "latest_checkpoint", "resolve_resume",
]

DTYPES = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
SCHEDULERS = ("constant", "linear", "cosine")
MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, truncated or missing a file (the message names the file)."""


@dataclass
class TrainConfig:
    """The training fields every recipe shares (each recipe picks its own defaults through the CLI)."""

    device: str = "auto"  # auto: CUDA when present, else CPU
    dtype: str = "fp32"  # mixed precision: bf16 / fp16 autocast (weights stay fp32)
    batch_size: int = 32  # per process; global batch = batch_size * grad_accum * processes
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    scheduler: str = "constant"  # learning-rate schedule after warm-up: constant, linear or cosine (to 0)
    max_grad_norm: float | None = 1.0  # None or 0: no clipping
    epochs: int = 1
    steps: int | None = None  # optimizer steps; when set it bounds the run instead of epochs
    gradient_checkpointing: bool = False
    save_every: int = 0  # optimizer steps between checkpoints (0: only where the recipe saves)
    resume: str | None = None  # a checkpoint folder, a run folder, or "latest" (in the run folder)
    seed: int = 0
    patience: int | None = None  # epochs without improvement of the monitored metric before stopping
    progress: bool = True
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    extra: dict[str, Any] = field(default_factory=dict)  # recipe fields worth keeping in the run config

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        for name in ("batch_size", "grad_accum"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.epochs < 1 and self.steps is None:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.save_every < 0:
            raise ValueError(f"save_every must be >= 0, got {self.save_every}")
        if isinstance(self.lora_targets, str):
            self.lora_targets = tuple(t for t in self.lora_targets.split(",") if t)
        self.lora_targets = tuple(self.lora_targets)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        d = asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d


def add_training_args(parser: argparse.ArgumentParser, llm: bool = False, **defaults: Any) -> argparse.ArgumentParser:
    """Add the shared training flags to `parser` (LoRA flags too when `llm`); `defaults` overrides defaults."""
    base = TrainConfig()
    d = {f.name: getattr(base, f.name) for f in fields(TrainConfig)}
    unknown = set(defaults) - set(d)
    if unknown:
        raise ValueError(f"defaults: unknown training fields {sorted(unknown)}")
    d.update(defaults)
    g = parser.add_argument_group("training (fastrec.train)")
    g.add_argument("--device", choices=DEVICES, default=d["device"], help="auto: CUDA when present, else CPU")
    g.add_argument("--dtype", choices=DTYPES, default=d["dtype"], help="mixed precision (autocast)")
    g.add_argument("--batch-size", type=int, default=d["batch_size"],
                   help="per process (global = batch size x grad-accum x processes)")
    g.add_argument("--grad-accum", type=int, default=d["grad_accum"], help="gradient accumulation steps")
    g.add_argument("--lr", type=float, default=d["lr"])
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    g.add_argument("--warmup-steps", type=int, default=d["warmup_steps"])
    g.add_argument("--lr-scheduler", dest="scheduler", choices=SCHEDULERS, default=d["scheduler"],
                   help="after warm-up: constant, or linear / cosine decay to 0 over the run")
    g.add_argument("--max-grad-norm", type=float, default=d["max_grad_norm"], help="0: no clipping")
    g.add_argument("--epochs", type=int, default=d["epochs"])
    g.add_argument("--steps", type=int, default=d["steps"], help="optimizer steps (overrides --epochs)")
    g.add_argument("--gradient-checkpointing", action="store_true", default=d["gradient_checkpointing"])
    g.add_argument("--save-every", type=int, default=d["save_every"], help="checkpoint every N optimizer steps")
    g.add_argument("--resume", nargs="?", const="latest", default=d["resume"],
                   help="resume from a checkpoint folder or a run folder (no value: the latest in --out)")
    g.add_argument("--seed", type=int, default=d["seed"])
    g.add_argument("--patience", type=int, default=d["patience"], help="early stopping: epochs without improvement")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=d["progress"],
                   help="no progress bars")
    if llm:
        g.add_argument("--lora", action="store_true", default=d["lora"], help="LoRA (peft); default: full fine-tuning")
        g.add_argument("--lora-r", type=int, default=d["lora_r"])
        g.add_argument("--lora-alpha", type=int, default=d["lora_alpha"])
        g.add_argument("--lora-dropout", type=float, default=d["lora_dropout"])
        g.add_argument("--lora-targets", default=",".join(d["lora_targets"]), help="comma-separated module names")
    return parser


def config_from_args(args: argparse.Namespace, cls: type[TrainConfig] = TrainConfig, **extra: Any) -> TrainConfig:
    """A TrainConfig (or the subclass `cls`, a recipe's own config) from parsed flags: fields absent from
    `args` keep their defaults; `extra` goes to .extra."""
    names = {f.name for f in fields(cls)} - {"extra"}
    kw = {k: getattr(args, k) for k in names if hasattr(args, k)}
    if kw.get("max_grad_norm") == 0:
        kw["max_grad_norm"] = None
    return cls(**kw, extra=dict(extra))


# ------------------------------------------------------------------------------------------- checkpoint files
def write_manifest(folder: str | Path) -> Path:
    """Record the name and size of every file under `folder` in manifest.json (written last)."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    path = folder / MANIFEST
    path.write_text(json.dumps({"files": files}, indent=1))
    return path


def verify_checkpoint(folder: str | Path) -> Path:
    """Check `folder` against its manifest; raises CheckpointError naming a missing or truncated file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} does not exist")
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"checkpoint {folder} is incomplete: {manifest} is missing")
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"checkpoint file {manifest} is truncated or corrupt ({e})") from e
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing")
        if path.stat().st_size != size:
            raise CheckpointError(f"checkpoint file {path} is truncated ({path.stat().st_size} of {size} bytes)")
    return folder


def _step_of(path: Path) -> int:
    tail = path.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def latest_checkpoint(run: str | Path) -> Path | None:
    """The complete checkpoint (one with a manifest) of `run` with the most steps, or None.

    Looks in `run` itself, `run/checkpoints` (the engine's and lcrec's Trainer layout)."""
    run = Path(run)
    cands = []
    for parent in (run, run / "checkpoints"):
        if parent.is_dir():
            cands += [p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")
                      and _step_of(p) >= 0 and (p / MANIFEST).is_file()]
    return max(cands, key=_step_of) if cands else None


def resolve_resume(resume: str, out: str | Path | None) -> Path:
    """The checkpoint a --resume value names: a checkpoint folder, a run folder (its latest complete
    checkpoint) or "latest" (in `out`); verified against its manifest."""
    out = Path(out) if out is not None else None
    path = Path(resume) if resume != "latest" else out
    if path is None:
        raise CheckpointError("resume: 'latest' needs the run folder (--out)")
    if (path / MANIFEST).is_file() or (path / "trainer_state.json").is_file():
        return verify_checkpoint(path)
    found = latest_checkpoint(path)
    if found is None:
        raise CheckpointError(f"resume: no complete checkpoint in {path}")
    return verify_checkpoint(found)


def _is_hf(model: torch.nn.Module) -> bool:
    return hasattr(model, "save_pretrained") and hasattr(model, "config")


def save_model(model: torch.nn.Module, folder: str | Path, tokenizer: Any = None,
               state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Export `model` to `folder`: save_pretrained (safetensors; PEFT saves the adapter) for HF / PEFT models,
    ``model.safetensors`` for plain modules; the tokenizer into ``folder/tokenizer`` when given."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if _is_hf(model):
        model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    else:
        sd = state_dict if state_dict is not None else model.state_dict()
        save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(folder / "model.safetensors"))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder / "tokenizer")
    return folder


def load_model_state(model: torch.nn.Module, folder: str | Path, strict: bool = True) -> torch.nn.Module:
    """Load ``folder/model.safetensors`` (or the file itself) into a plain module; errors name the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder)
    path = path / "model.safetensors" if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint file {path} is truncated or corrupt ({e})") from e
    model.load_state_dict(sd, strict=strict)
    return model


class LossForward(torch.nn.Module):
    """Wraps `model` so that ``forward(*a, **k)`` is ``model.<method>(*a, **k)`` (DDP syncs through forward).

    Engine checkpoints export the inner model (keys without the ``model.`` prefix)."""

    def __init__(self, model: torch.nn.Module, method: str = "loss") -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.model, self.method)(*args, **kwargs)


# -------------------------------------------------------------------------------------------------- engine
class Engine:
    """A hand training loop on `accelerate.Accelerator` (see the module docstring for the shape)."""

    def __init__(self, cfg: TrainConfig, out: str | Path | None = None, tokenizer: Any = None,
                 files: dict[str, Any] | None = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, set_seed

        self.cfg = cfg
        self.out = Path(out) if out is not None else None
        self.tokenizer = tokenizer
        self.files = dict(files or {})  # name -> str / bytes / JSON-able object, copied into checkpoints
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device")
        precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.dtype]
        _fresh_accelerate_state(precision, cpu=cfg.device == "cpu")
        self.accelerator = Accelerator(
            cpu=cfg.device == "cpu", mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum,
            step_scheduler_with_optimizer=False,  # the engine steps the scheduler once per optimizer step
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed))
        set_seed(cfg.seed)
        self.global_step = 0  # optimizer steps done
        self.epoch = 0
        self.batches_done = 0  # micro-batches of the current epoch done
        self._skip = 0
        self.should_stop = False
        self.best: float | None = None
        self._bad_epochs = 0
        self._models: list[torch.nn.Module] = []
        self._loss_sum: torch.Tensor | None = None
        self._loss_n = 0
        self._last_lr: float | None = None
        self._bar = None
        self.metrics_path = None
        if self.out is not None and self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.metrics_path = self.out / "metrics.jsonl"

    # ---- process facts
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    def print(self, *args: Any) -> None:
        """print on the main process only."""
        self.accelerator.print(*args)

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return self.accelerator.gather(t)

    def reduce(self, t: torch.Tensor, op: str = "mean") -> torch.Tensor:
        return self.accelerator.reduce(t, op)

    def autocast(self):
        return self.accelerator.autocast()

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        inner = self.accelerator.unwrap_model(model)
        return inner.model if isinstance(inner, LossForward) else inner

    # ---- setup
    def prepare(self, *objs: Any) -> Any:
        """accelerator.prepare (device, DDP / FSDP / DeepSpeed, autocast, sharded seeded loaders); models
        get gradient checkpointing when cfg.gradient_checkpointing and they support it."""
        for o in objs:
            if isinstance(o, torch.utils.data.DataLoader) and o.generator is None:
                # a generator of its own keeps DataLoader iterators from drawing on the global RNG, so a
                # resumed run (RNG restored, iterator rebuilt) draws the same dropout masks as an unbroken one
                o.generator = torch.Generator().manual_seed(self.cfg.seed)
            if isinstance(o, torch.nn.Module):
                if self.cfg.gradient_checkpointing:
                    inner = o.model if isinstance(o, LossForward) else o
                    if not hasattr(inner, "gradient_checkpointing_enable"):
                        raise ValueError(f"gradient_checkpointing: {type(inner).__name__} does not support it")
                    inner.gradient_checkpointing_enable()
        out = self.accelerator.prepare(*objs)
        out_t = out if isinstance(out, tuple) else (out,)
        self._models += [o for o in out_t if isinstance(o, torch.nn.Module) and o not in self._models]
        return out

    def resume(self, path: str | Path | None = None) -> Path | None:
        """Restore a checkpoint (path, or cfg.resume): weights, optimizer, scheduler, RNG, step and position.

        Call after prepare(). Returns the checkpoint folder, or None when there is nothing to resume."""
        target = path if path is not None else self.cfg.resume
        if not target:
            return None
        folder = resolve_resume(str(target), self.out)
        self.accelerator.load_state(str(folder / "state"))
        state = json.loads((folder / "trainer_state.json").read_text())
        self.global_step, self.epoch, self._skip = state["step"], state["epoch"], state["batches_done"]
        self.best, self._bad_epochs = state.get("best"), state.get("bad_epochs", 0)
        self.print(f"resumed from {folder}: step {self.global_step}, epoch {self.epoch}, {self._skip} batches done")
        return folder

    # ---- loop
    def total_steps(self, loader: Any) -> int:
        """Optimizer steps of the whole run: cfg.steps, else epochs x ceil(batches / grad_accum)."""
        if self.cfg.steps is not None:
            return self.cfg.steps
        return self.cfg.epochs * math.ceil(len(loader) / self.cfg.grad_accum)

    def _finished(self) -> bool:
        if self.should_stop:
            return True
        if self.cfg.steps is not None:
            return self.global_step >= self.cfg.steps
        return self.epoch >= self.cfg.epochs

    def epochs(self) -> Iterator[int]:
        """Epoch numbers from the current one (after a resume: the interrupted one) until the budget ends."""
        while not self._finished():
            yield self.epoch
            self.epoch += 1
            self.batches_done = 0
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def batches(self, loader: Any) -> Iterator[Any]:
        """This epoch's batches inside accumulate + autocast; counts optimizer steps, logs, checkpoints."""
        from accelerate import skip_first_batches

        acc = self.accelerator
        if self._bar is None:
            self._bar = tqdm(total=self.total_steps(loader), initial=self.global_step, desc="train", unit="step",
                             disable=not (self.cfg.progress and self.is_main), dynamic_ncols=True)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.epoch)
        skip, self._skip = self._skip, 0
        it = skip_first_batches(loader, skip) if skip else loader
        self.batches_done = skip
        for batch in it:
            with acc.accumulate(*self._models), acc.autocast():
                yield batch
            self.batches_done += 1
            if acc.sync_gradients:
                self._after_optimizer_step()
            if self.should_stop or (self.cfg.steps is not None and self.global_step >= self.cfg.steps):
                break

    def step(self, loss: torch.Tensor, optimizer: Any, scheduler: Any = None) -> None:
        """Backward (scaled for accumulation), then on the last micro-batch: clip, step, schedule, zero."""
        acc = self.accelerator
        acc.backward(loss)
        d = loss.detach().float()
        self._loss_sum = d if self._loss_sum is None else self._loss_sum + d
        self._loss_n += 1
        if acc.sync_gradients:
            if self.cfg.max_grad_norm:
                params = [p for m in self._models for p in m.parameters() if p.requires_grad]
                acc.clip_grad_norm_(params, self.cfg.max_grad_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            self._last_lr = float(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad(set_to_none=True)

    def _after_optimizer_step(self) -> None:
        self.global_step += 1
        row: dict[str, Any] = {"step": self.global_step, "epoch": self.epoch}
        if self._loss_sum is not None:
            loss = self.reduce(self._loss_sum / max(self._loss_n, 1), "mean")  # mean over processes
            row["loss"] = float(loss)
            self._loss_sum, self._loss_n = None, 0
        if self._last_lr is not None:
            row["lr"] = self._last_lr
        self.log(row)
        if self._bar is not None:
            self._bar.update(1)
            if "loss" in row:
                self._bar.set_postfix(loss=f"{row['loss']:.4f}", epoch=self.epoch)
        if self.cfg.save_every and self.global_step % self.cfg.save_every == 0 and self.out is not None:
            self.save_checkpoint()

    def log(self, row: dict[str, Any]) -> None:
        """Append one JSON line to RUN/metrics.jsonl (main process only)."""
        if self.metrics_path is not None:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def end_epoch(self, metrics: dict[str, float], monitor: str | None = None, mode: str = "max") -> bool:
        """Log the epoch's metrics; with `monitor`, track the best value and stop after cfg.patience epochs
        without improvement. Returns True when this epoch improved the monitored value (or no monitor)."""
        self.log({"epoch": self.epoch, "step": self.global_step, **metrics})
        if monitor is None:
            return True
        if monitor not in metrics:
            raise KeyError(f"monitor: {monitor!r} is not among the metrics {sorted(metrics)}")
        value = float(metrics[monitor])
        better = self.best is None or (value > self.best if mode == "max" else value < self.best)
        if better:
            self.best, self._bad_epochs = value, 0
        else:
            self._bad_epochs += 1
            if self.cfg.patience is not None and self._bad_epochs >= self.cfg.patience:
                self.should_stop = True
        return better

    # ---- checkpoints
    def save_checkpoint(self, name: str | None = None, extra_config: dict[str, Any] | None = None) -> Path:
        """Write RUN/checkpoints/<name or step-N> atomically (every process calls it); returns the folder."""
        if self.out is None:
            raise ValueError("out: the engine has no run folder to write checkpoints to")
        acc = self.accelerator
        name = name or f"step-{self.global_step:08d}"
        final = self.out / "checkpoints" / name
        tmp = final.parent / f".tmp-{name}"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.wait()
        acc.save_state(str(tmp / "state"), safe_serialization=True)
        exports = []
        for m in self._models:
            sd = acc.get_state_dict(m)  # a collective under FSDP / DeepSpeed
            if isinstance(acc.unwrap_model(m), LossForward) and sd is not None:
                sd = {k.removeprefix("model."): v for k, v in sd.items()}
            exports.append((m, sd))
        if self.is_main:
            for i, (m, sd) in enumerate(exports):
                save_model(self.unwrap(m), tmp / ("model" if i == 0 else f"model_{i}"), state_dict=sd)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp / "tokenizer")
            config = {"train": self.cfg.to_dict(), **(extra_config or {})}
            (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
            (tmp / "trainer_state.json").write_text(json.dumps({
                "step": self.global_step, "epoch": self.epoch, "batches_done": self.batches_done,
                "best": self.best, "bad_epochs": self._bad_epochs, "world_size": self.world_size}))
            for fname, content in self.files.items():
                _write_file(tmp / fname, content)
        self.wait()
        if self.is_main:
            write_manifest(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        self.wait()
        return final


def _write_file(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, Path):
        shutil.copyfile(content, path)
    else:
        path.write_text(json.dumps(content))


def _fresh_accelerate_state(precision: str, cpu: bool) -> None:
    """Let one process run several engines (stages) with different dtypes: accelerate keeps one global
    state and refuses a second Accelerator with another precision; the process group (PartialState) stays."""
    from accelerate.state import AcceleratorState, GradientState

    state = AcceleratorState._shared_state
    if state and (state.get("_mixed_precision") != precision or (cpu and state["device"].type != "cpu")):
        AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


# ---------------------------------------------------------------------------------------------- HF Trainer
def _use_cpu(cfg: TrainConfig) -> bool:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device")
    return cfg.device == "cpu" or not torch.cuda.is_available()


def training_arguments(cfg: TrainConfig, out: str | Path, **overrides: Any):
    """`transformers.TrainingArguments` carrying the same flags (checkpoints go to OUT/checkpoints)."""
    from transformers import TrainingArguments

    kw: dict[str, Any] = dict(
        output_dir=str(Path(out) / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps, max_grad_norm=cfg.max_grad_norm or 0.0, num_train_epochs=cfg.epochs,
        max_steps=cfg.steps if cfg.steps is not None else -1, bf16=cfg.dtype == "bf16", fp16=cfg.dtype == "fp16",
        use_cpu=_use_cpu(cfg), gradient_checkpointing=cfg.gradient_checkpointing,
        save_strategy="steps" if cfg.save_every else "no", save_steps=cfg.save_every or 500,
        seed=cfg.seed, data_seed=cfg.seed, logging_steps=1, report_to=[], disable_tqdm=not cfg.progress,
        remove_unused_columns=False, dataloader_num_workers=0,
        lr_scheduler_type={"constant": "constant_with_warmup"}.get(cfg.scheduler, cfg.scheduler))
    if cfg.gradient_checkpointing:
        kw["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__:  # the names transformers 5.x uses
        kw["activation_checkpointing"] = kw.pop("gradient_checkpointing")
        if "gradient_checkpointing_kwargs" in kw:
            kw["activation_checkpointing_kwargs"] = kw.pop("gradient_checkpointing_kwargs")
    kw.update(overrides)
    return TrainingArguments(**kw)


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class JsonlMetrics(_callback_base()):
    """Trainer callback: every log (loss, lr, grad norm per step) as one JSON line, main process only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


class CheckpointManifest(_callback_base()):
    """Trainer callback: after a checkpoint is written, add its manifest (marks it complete; see verify_checkpoint).

    `files` (name -> content) are copied into every checkpoint first (tokenizer-independent extras: the
    index, the run config)."""

    def __init__(self, files: dict[str, Any] | None = None) -> None:
        self.files = dict(files or {})

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            for name, content in self.files.items():
                _write_file(folder / name, content)
            write_manifest(folder)


def apply_lora(model: torch.nn.Module, cfg: TrainConfig, modules_to_save: list[str] | None = None):
    """Wrap `model` in a peft LoRA model when cfg.lora (r, alpha, dropout, target modules); else return it."""
    if not cfg.lora:
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM", modules_to_save=modules_to_save)
    return get_peft_model(model, config)

