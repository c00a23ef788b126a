"""KIRec: LLM knowledge injection into sequential recommendation (Bai and Jia, 2026), end to end.

    fastrec kirec extract --data ../shared/data/amazon-scientific --out runs/kirec [--model LLM] [--encoder E]
    fastrec kirec train   --data ../shared/data/amazon-scientific --out runs/kirec --backbone sasrec --fusion gate
    fastrec kirec train   --data ../shared/data/amazon-instruments --fusion none     # IDs only: no item text needed
    fastrec kirec eval    --data ../shared/data/amazon-scientific --checkpoint runs/kirec/sasrec-gate-s0.pt
    fastrec kirec compare --data ../shared/data/amazon-scientific --out runs/kirec --seeds 0 1 2
        --backbones sasrec gru4rec bert4rec --fusions none semantic add gate concat

1. extract: a local Hugging Face causal LM lists each item's attributes (brand, category, material,
   function, audience, ...) from its title and description (its chat template when it has one, left-padded
   batches, greedy, bf16 on the GPU when there is one; cached to JSONL). Without a generator, or where the
   LM returns nothing for an item, a deterministic structured extraction from the item's own fields is used
   instead, and every record says which (`"source": "llm:<name>"` or `"structured-fallback"`).
2. embed: the attribute text goes through `--encoder`: the offline MiniLM sentence encoder (default), any
   local HF encoder folder (mean pooling), or `generator` = the generator LLM's own last hidden states
   mean-pooled over the attribute text (D = its hidden size: the paper's high-dimensional semantic
   embedding). Batched on the GPU when there is one; cached by encoder fingerprint and text hash.
3. reduce + fuse: `SemanticFusionEmbedding` (PCA/whitening-initialised Linear(D -> d), fused with the
   item-ID rows by `fastrec.ops.semantic_fusion_lookup`) inside any of three backbones: SASRec, GRU4Rec,
   BERT4Rec (cloze training). Baselines: "none" (IDs only) and "semantic" (the reduced LLM table alone).
4. train with cross-entropy over the full item set until validation NDCG@10 stops improving (early stopping,
   `patience` epochs); evaluate by full ranking, HR@10/20 and NDCG@10/20, with each user's history excluded
   from the ranking (RecBole's full-sort protocol; the split is LC-Rec's leave-one-out).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from fastrec.data import Interactions, LeaveOneOutSplit, leave_one_out, load_lcrec  # noqa: F401 (re-exported)
from fastrec.data.text import default_device
from fastrec.eval import evaluate_topk
from fastrec.nn import BERT4Rec, GRU4Rec, IDEmbedding, SASRec, SemanticFusionEmbedding
from fastrec.ops import topk_scores

FALLBACK = "structured-fallback"
PROMPT = (
    "List the attributes of this product as 'key: value' lines (brand, category, material, function, "
    "audience, and any other useful attribute).\nTitle: {title}\nDescription: {description}\nAttributes:\n"
)
FUSIONS = ("none", "semantic", "add", "gate", "concat")
BACKBONES = {"sasrec": SASRec, "gru4rec": GRU4Rec, "bert4rec": BERT4Rec}
NAMES = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "bert4rec": "BERT4Rec", "none": "IDs only",
         "semantic": "semantic only", "add": "KIRec add", "gate": "KIRec gate", "concat": "KIRec concat"}


# ----------------------------------------------------------------------------- files


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_jsonl(path: Path) -> dict[int, dict]:
    out = {}
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    out[int(rec["item"])] = rec
    return out


def _write_jsonl(path: Path, records: dict[int, dict]) -> None:
    lines = "".join(json.dumps(records[k], ensure_ascii=False) + "\n" for k in sorted(records))
    _atomic_write(path, lambda f: f.write(lines.encode("utf-8")))


# ----------------------------------------------------------------------------- 1. extraction


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text or "")).strip()


def structured_attributes(fields: dict[str, str], max_words: int = 40) -> str:
    """The deterministic fallback: attribute lines read from the item's own fields (no model involved).

    brand, category path, title and the first `max_words` words of the description, as 'key: value' lines;
    empty fields are left out, so an item with no text gives "".
    """
    lines = []
    for key, label in (("brand", "brand"), ("categories", "category"), ("title", "title")):
        value = _clean(fields.get(key, ""))
        if value:
            lines.append(f"{label}: {value}")
    desc = _clean(fields.get("description", "")).split()
    if desc:
        lines.append("description: " + " ".join(desc[:max_words]))
    return "\n".join(lines)


def _chat(prompts: list[str], tokenizer) -> tuple[list[str], bool]:
    """The prompts in the tokenizer's chat template when it has one (then the template adds the special
    tokens itself), else as they are. Returns (texts, add_special_tokens)."""
    if getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                              add_generation_prompt=True) for p in prompts], False
    return prompts, True


def _llm_attributes(prompts: list[str], model, tokenizer, batch_size: int, max_new_tokens: int,
                    desc: str, progress: bool = True) -> list[str]:
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts, special = _chat(prompts, tokenizer)
    outs = []
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", disable=not progress):
        batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                          max_length=512, add_special_tokens=special).to(device)
        with torch.no_grad():
            gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        outs += [t.strip() for t in tokenizer.batch_decode(gen[:, batch["input_ids"].shape[1]:],
                                                           skip_special_tokens=True)]
    return outs


def _generator_of(rec: dict) -> str:
    """The generator a cached record was made under ("" = none); older caches only had `source`."""
    if "generator" in rec:
        return rec["generator"]
    return rec["source"][4:] if rec.get("source", "").startswith("llm:") else ""


def extract_attributes(item_text: dict[int, dict[str, str]], num_items: int, cache: str | Path | None = None,
                       model=None, tokenizer=None, model_name: str = "", batch_size: int = 8,
                       max_new_tokens: int = 64, progress: bool = True) -> dict[int, dict]:
    """Attribute text of every item 0..num_items-1: {item: {"item", "source", "generator", "attributes"}}.

    With `model`/`tokenizer` (a local HF causal LM), the LM answers PROMPT for each item (batched, greedy,
    chat template when the tokenizer has one); an item the LM returns nothing for gets the structured
    fallback, labelled as such (`source` is per item). Without a model every item gets the fallback.
    Records already in the `cache` JSONL made under the same generator are reused; the cache is rewritten
    atomically at the end.
    """
    generator = (model_name or type(model).__name__) if model is not None else ""
    cache = Path(cache) if cache is not None else None
    records = {k: v for k, v in (_read_jsonl(cache) if cache else {}).items() if _generator_of(v) == generator}
    todo = [i for i in range(num_items) if i not in records]

    def fallback(i: int) -> dict:
        return {"item": i, "source": FALLBACK, "generator": generator,
                "attributes": structured_attributes(item_text.get(i, {}))}

    if model is None:
        for i in todo:
            records[i] = fallback(i)
    elif todo:
        prompts = [PROMPT.format(title=_clean(item_text.get(i, {}).get("title", "")),
                                 description=" ".join(_clean(item_text.get(i, {}).get("description", "")).split()[:80]))
                   for i in todo]
        for i, text in zip(todo, _llm_attributes(prompts, model, tokenizer, batch_size, max_new_tokens,
                                                 "extract attributes", progress), strict=True):
            records[i] = ({"item": i, "source": f"llm:{generator}", "generator": generator, "attributes": text}
                          if text.strip() else fallback(i))
    if cache is not None and todo:
        _write_jsonl(cache, records)
    return {i: records[i] for i in range(num_items)}


def attribute_sources(records: dict[int, dict]) -> dict[str, int]:
    """How many items' attributes came from each source ("llm:<name>", "structured-fallback")."""
    counts: dict[str, int] = {}
    for r in records.values():
        counts[r["source"]] = counts.get(r["source"], 0) + 1
    return dict(sorted(counts.items()))


# ----------------------------------------------------------------------------- 2. embeddings


def attribute_embeddings(records: dict[int, dict], encoder=None, tokenizer=None, cache: str | Path | None = None,
                         batch_size: int = 64, device: str | torch.device | None = None,
                         progress: bool = True) -> torch.Tensor:
    """[I, D] fp32 embedding of every item's attribute text (`fastrec.data.text_embeddings`, mean pooling).

    encoder: None (offline MiniLM), a local folder (an encoder or a causal LM: its last hidden states), or a
    loaded HF model with its `tokenizer` (e.g. the generator LLM itself).
    Defined behaviour for an empty attribute text: the row is the mean of the non-empty rows, so after
    the reduction's centring it carries no semantic signal and the item relies on its ID row.
    """
    from fastrec.data import text_embeddings

    texts = [records[i]["attributes"] for i in range(len(records))]
    empty = torch.tensor([not t.strip() for t in texts], dtype=torch.bool)
    if bool(empty.all()):
        raise ValueError("every item has an empty attribute text; nothing to embed (a data set without item "
                         "text supports IDs-only training: fusion 'none')")
    kept = [t for t in texts if t.strip()]
    part = text_embeddings(kept, model=encoder, tokenizer=tokenizer, batch_size=batch_size, cache=cache,
                           device=device, progress=progress).float()
    if not bool(torch.isfinite(part).all()):
        raise ValueError("the text encoder returned NaN or Inf embeddings")
    emb = part.mean(0).repeat(len(texts), 1)
    emb[~empty] = part
    return emb


# ----------------------------------------------------------------------------- 3./4. training and evaluation


def _left_pad(seqs: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    out = torch.zeros(len(seqs), max_len, dtype=torch.int64)
    for r, s in enumerate(seqs):
        s = list(s)[-max_len:]
        if s:
            out[r, max_len - len(s):] = torch.as_tensor(s)
    return out


def training_pairs(split: LeaveOneOutSplit, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) [S, max_len], item ids shifted by +1 (0 = padding): every train sequence
    predicts its next item at each position; long sequences are cut into max_len windows."""
    inputs, targets = [], []
    for seq in split.train.sequences():
        s = [i + 1 for i in seq]
        for end in range(len(s), 1, -max_len):
            window = s[max(0, end - max_len - 1):end]
            inputs.append(window[:-1])
            targets.append(window[1:])
    return _left_pad(inputs, max_len), _left_pad(targets, max_len)


def cloze_sequences(split: LeaveOneOutSplit, max_len: int) -> torch.Tensor:
    """[S, max_len] left-padded train windows (ids +1) for BERT4Rec's cloze task: each train sequence cut
    into max_len windows from its end (sequences of one item are kept: their one item can be masked)."""
    windows = []
    for seq in split.train.sequences():
        s = [i + 1 for i in seq]
        for end in range(len(s), 0, -max_len):
            windows.append(s[max(0, end - max_len):end])
    return _left_pad(windows, max_len)


def _trim(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the leading columns that are padding in every row of the first tensor (left-padded batches):
    short sequences then cost attention over their own length only; positions stay right-aligned."""
    used = (tensors[0] != 0).any(0)
    first = int(used.int().argmax()) if bool(used.any()) else tensors[0].shape[1] - 1
    return tuple(t[:, first:] for t in tensors)


def length_batches(lengths: torch.Tensor, batch_size: int, gen: torch.Generator, chunk: int = 50
                   ) -> list[torch.Tensor]:
    """Row indices of each batch of one epoch: rows shuffled, then sorted by length within chunks of
    `chunk` batches, cut into batches, and the batches shuffled. Left-padded batches are trimmed to their
    longest row (`_trim`), so similar lengths together cut the attention and GRU work several-fold on
    data sets of short sequences (Amazon: mean length ~5 of max 50), with every row seen once per epoch."""
    order = torch.randperm(lengths.numel(), generator=gen)
    batches: list[torch.Tensor] = []
    for start in range(0, order.numel(), batch_size * chunk):
        part = order[start:start + batch_size * chunk]
        batches += list(part[torch.argsort(lengths[part], stable=True)].split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def _full_ranking_topk(queries: torch.Tensor, items: torch.Tensor, k: int,
                       exclude: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Top-k item ids per query by dot product over items 1..I (row 0 is padding, never ranked),
    excluding the per-row CSR `exclude` (ids in the padded numbering). fastrec.ops.topk_scores: fused
    GEMM + mask + running top-k, memory bounded; equal scores rank the lower id first."""
    if exclude is not None:
        exclude = (exclude[0], exclude[1] - 1)
    _, ids = topk_scores(queries.float().contiguous(), items[1:].float().contiguous(), k, exclude=exclude)
    return ids + 1


def _eval_inputs(split: LeaveOneOutSplit, stage: str, max_len: int):
    indptr, items = split.history(stage)
    hist = [(items[indptr[j]:indptr[j + 1]] + 1).tolist() for j in range(indptr.numel() - 1)]
    users = split.valid_users if stage == "valid" else split.test_users
    targets = (split.valid_targets if stage == "valid" else split.test_targets) + 1
    seen_ptr, seen_idx = split.seen(stage)
    lengths = (seen_ptr[1:] - seen_ptr[:-1])[users]
    starts = seen_ptr[users]
    rows = [seen_idx[s:s + n] + 1 for s, n in zip(starts.tolist(), lengths.tolist(), strict=True)]
    ex_ptr = torch.zeros(len(rows) + 1, dtype=torch.int64)
    ex_ptr[1:] = torch.cumsum(lengths, 0)
    ex_idx = torch.cat(rows) if rows else torch.empty(0, dtype=torch.int64)
    return _left_pad(hist, max_len), targets, (ex_ptr, ex_idx)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def _csr_rows(ptr: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sub-CSR (indptr, indices) of the given rows, in that order."""
    lengths = ptr[rows + 1] - ptr[rows]
    new_ptr = torch.zeros(rows.numel() + 1, dtype=torch.int64)
    new_ptr[1:] = torch.cumsum(lengths, 0)
    pos = torch.arange(int(new_ptr[-1])) + torch.repeat_interleave(ptr[rows] - new_ptr[:-1], lengths)
    return new_ptr, idx[pos]


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: LeaveOneOutSplit, stage: str = "test", ks: Sequence[int] = (10, 20),
             batch_size: int = 512, inputs=None) -> dict[str, float]:
    """Full-ranking HR@k / NDCG@k on the valid or test targets (history items excluded), on the model's device.

    Users are batched by history length (each batch trimmed to its longest history); results are per user."""
    model.eval()
    device = _device_of(model)
    seqs, targets, (ex_ptr, ex_idx) = inputs or _eval_inputs(split, stage, model.max_len)
    table = model.item_table()
    order = torch.argsort((seqs != 0).sum(1), stable=True)
    top = torch.empty(seqs.shape[0], max(ks), dtype=torch.int64)
    for rows in order.split(batch_size):
        (batch,) = _trim(seqs[rows])
        q = model(batch.to(device))
        ptr, idx = _csr_rows(ex_ptr, ex_idx, rows)
        top[rows] = _full_ranking_topk(q, table, max(ks), (ptr.to(device), idx.to(device))).cpu()
    return evaluate_topk(top, targets, ks=ks, metrics=("HR", "NDCG"))


def build_model(num_items: int, semantic: torch.Tensor | None, fusion: str = "gate", d: int = 64,
                init: str = "pca", max_len: int = 50, dropout: float = 0.2, backbone: str = "sasrec"
                ) -> torch.nn.Module:
    """A backbone over items 1..num_items (0 = padding) with plain IDs ("none"), the reduced semantic table
    alone ("semantic") or KIRec fusion ("add", "gate", "concat")."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {tuple(BACKBONES)}, got {backbone!r}")
    if fusion == "none":
        emb = IDEmbedding(num_items + 1, d)
    else:
        if semantic is None or semantic.dim() != 2 or semantic.shape[0] != num_items:
            raise ValueError(f"semantic must be [{num_items}, D] for fusion {fusion!r} (item text is needed: "
                             "use fusion 'none' for IDs only)")
        table = torch.cat([torch.zeros(1, semantic.shape[1]), semantic.float().cpu()])  # row 0 = padding
        emb = SemanticFusionEmbedding(table, d, mode=fusion, padding_idx=0, init=init)
    return BACKBONES[backbone](num_items + 1, d=d, max_len=max_len, dropout=dropout, item_embedding=emb)


class LengthBatchSampler(torch.utils.data.Sampler):
    """`length_batches` as a DataLoader batch sampler; epoch e draws from a generator seeded by (seed, e),
    so a resumed run (the engine calls `set_epoch`) sees the same batches as an unbroken one."""

    def __init__(self, lengths: torch.Tensor, batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.lengths.numel() / self.batch_size)

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        for batch in length_batches(self.lengths, self.batch_size, gen):
            yield batch.tolist()


def _engine_device(device: str | torch.device | None) -> str:
    if device is None:
        return "auto"
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    return kind


def train(split: LeaveOneOutSplit, semantic: torch.Tensor | None, fusion: str = "gate", epochs: int = 100,
          batch_size: int = 256, lr: float = 1e-3, seed: int = 0, d: int = 64, max_len: int = 50,
          init: str = "pca", weight_decay: float = 0.0, backbone: str = "sasrec", patience: int = 5,
          dropout: float = 0.2, device: str | torch.device | None = None, log=print, cfg=None,
          out: str | Path | None = None) -> tuple[torch.nn.Module, dict]:
    """Train a backbone (IDs only, semantic only, or KIRec fusion) on the shared engine (`fastrec.train`)
    until validation NDCG@10 has not improved for `patience` epochs (at most `epochs`); the best epoch's
    weights are kept.

    `cfg` (a `fastrec.train.TrainConfig`: device, dtype, batch size, accumulation, lr, epochs/steps,
    patience, seed, save_every, resume, ...) overrides the keyword arguments of the same meaning. With
    `out`, the engine writes RUN/metrics.jsonl and checkpoints (RUN/checkpoints/best at every improvement,
    `last` at the end, step-N every cfg.save_every steps) and `cfg.resume` continues a run.
    Returns the model (best state loaded, on the engine's device) and a history {"epochs": [...],
    "best_epoch", "epochs_run", "converged", "valid", "test", "seconds", ...}.
    """
    from fastrec.train import Engine, LossForward, TrainConfig, load_model_state

    if cfg is None:
        cfg = TrainConfig(device=_engine_device(device), batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                          epochs=epochs, seed=seed, patience=patience, max_grad_norm=None, progress=False)
    if cfg.patience is not None and cfg.patience < 1:
        raise ValueError(f"patience must be >= 1, got {cfg.patience}")
    engine = Engine(cfg, out=out)  # seeds every RNG with cfg.seed before the model is built
    model = build_model(split.data.num_items, semantic, fusion, d, init, max_len, dropout, backbone)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    cloze = backbone == "bert4rec"
    data = (cloze_sequences(split, max_len),) if cloze else training_pairs(split, max_len)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*data),
        batch_sampler=LengthBatchSampler((data[0] != 0).sum(1), cfg.batch_size, cfg.seed))
    wrapped, opt, loader = engine.prepare(LossForward(model, "loss"), opt, loader)
    engine.resume()
    valid_inputs = _eval_inputs(split, "valid", max_len)
    history = {"epochs": [], "backbone": backbone, "fusion": fusion, "seed": cfg.seed, "patience": cfg.patience,
               "max_epochs": cfg.epochs, "train": cfg.to_dict()}
    best_state = None
    t0 = time.perf_counter()
    for epoch in engine.epochs():
        wrapped.train()
        total, steps = 0.0, 0
        for batch in engine.batches(loader):
            loss = wrapped(*_trim(*batch))
            engine.step(loss, opt)
            total, steps = total + float(loss.detach()), steps + 1
        metrics = evaluate(model, split, "valid", inputs=valid_inputs)
        row = {"epoch": epoch + 1, "loss": total / max(steps, 1), **{f"valid_{k}": v for k, v in metrics.items()}}
        history["epochs"].append(row)
        log(f"[kirec] {backbone}/{fusion} seed {cfg.seed} epoch {epoch + 1}: loss {row['loss']:.4f} "
            f"valid NDCG@10 {metrics['NDCG@10']:.4f} HR@10 {metrics['HR@10']:.4f}")
        if engine.end_epoch({"loss": row["loss"], **metrics}, monitor="NDCG@10"):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            history["best_epoch"], history["valid"] = epoch + 1, metrics
            if out is not None:
                engine.save_checkpoint("best", extra_config={"kirec": {"best_epoch": epoch + 1, **metrics}})
    history["epochs_run"] = len(history["epochs"])
    history["converged"] = engine.should_stop  # stopped by patience, not by the epoch cap
    if out is not None:
        engine.save_checkpoint("last")
    if best_state is not None:
        model.load_state_dict(best_state)
    elif out is not None and (Path(out) / "checkpoints" / "best" / "model").is_dir():  # resumed after the best
        load_model_state(model, Path(out) / "checkpoints" / "best" / "model")
    history.setdefault("best_epoch", None)
    history["test"] = evaluate(model, split, "test")
    history["seconds"] = time.perf_counter() - t0
    return model, history


# ----------------------------------------------------------------------------- pipeline pieces for the CLI


def load_generator(path: str, device: str | torch.device | None = None):
    """A local HF causal LM and its tokenizer (offline), on `device` (default CUDA when available; bf16 there)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device) if device is not None else default_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype).to(device).eval()
    return model, tok


def _has_text(data: Interactions) -> bool:
    return any(any(str(v).strip() for v in fields.values()) for fields in data.item_text.values())


def prepare(data_dir: str | Path, out: str | Path, generator: str | None = None, batch_size: int = 8,
            encoder: str | None = None, semantic: bool = True, device: str | torch.device | None = None,
            log=print, progress: bool = True) -> tuple[Interactions, torch.Tensor | None, dict]:
    """Load the data set; when `semantic`, extract (cached JSONL) and embed (cached .npy) the attributes.

    encoder: None (offline MiniLM), a local HF folder, or "generator" (the generator LLM's mean-pooled last
    hidden states; needs `generator`). `progress`: tqdm bars for the LLM and encoder passes. Returns (data,
    semantic [I, D] or None, info) where info says where the attributes came from (per-source item counts)
    and which encoder embedded them.
    """
    data = load_lcrec(data_dir)
    info: dict = {"data": str(data_dir), "num_items": data.num_items, "attribute_sources": None, "encoder": None}
    if not semantic:
        return data, None, info
    if not _has_text(data):
        raise ValueError(f"{data_dir} has no item text (no <name>.item.json with titles/descriptions), so there "
                         "are no attributes to embed: semantic fusions need item text; use --fusion none "
                         "(IDs only) for this data set")
    if encoder == "generator" and not generator:
        raise ValueError("--encoder generator needs --model (the generator LLM whose hidden states are used)")
    out = Path(out)
    model = tok = None
    if generator:
        model, tok = load_generator(generator, device)
    records = extract_attributes(data.item_text, data.num_items, out / "attributes.jsonl", model, tok,
                                 model_name=Path(generator).name if generator else "", batch_size=batch_size,
                                 progress=progress)
    sources = attribute_sources(records)
    empty = sum(not r["attributes"].strip() for r in records.values())
    log(f"[kirec] attributes of {len(records)} items: " + ", ".join(f"{n} from {k}" for k, n in sources.items())
        + (" (structured fallback = deterministic extraction from the item fields, not an LLM)"
           if FALLBACK in sources else "") + f"; {empty} empty")
    if encoder == "generator":
        enc, enc_tok, name = model, tok, f"{Path(generator).name} last hidden states (mean)"
    else:
        from fastrec.data import default_encoder_path

        enc, enc_tok = encoder, None
        name = Path(encoder).name if encoder else f"{default_encoder_path().parent.name} (all-MiniLM-L6-v2)"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.split(" ")[0])
    semantic_table = attribute_embeddings(records, enc, enc_tok, cache=out / f"attribute_embeddings-{slug}.npy",
                                          device=device, progress=progress)
    info.update(attribute_sources=sources, encoder=name, semantic_dim=semantic_table.shape[1])
    log(f"[kirec] semantic table [{semantic_table.shape[0]}, {semantic_table.shape[1]}] from {name}")
    return data, semantic_table, info


def compare(split: LeaveOneOutSplit, semantic: torch.Tensor | None, seeds: Sequence[int] = (0, 1, 2),
            fusions: Sequence[str] = ("none", "gate"), backbones: Sequence[str] = ("sasrec",), log=print,
            on_result=None, cfg_for_seed=None, **train_kw) -> dict:
    """Every backbone x fusion over several seeds, same budget:
    {"<backbone>/<fusion>": {"backbone", "fusion", "runs": [...], "mean": .., "std": ..}}.
    `on_result(results)` is called after each backbone x fusion (to save partial results); `cfg_for_seed(seed)`
    gives the engine's TrainConfig of each run (the CLI's shared training flags)."""
    results: dict = {}
    for backbone in backbones:
        for fusion in fusions:
            runs = []
            for seed in seeds:
                cfg = cfg_for_seed(seed) if cfg_for_seed is not None else None
                _, hist = train(split, semantic, fusion, seed=seed, backbone=backbone, log=log, cfg=cfg, **train_kw)
                runs.append(hist)
            keys = list(runs[0]["test"])
            results[f"{backbone}/{fusion}"] = {
                "backbone": backbone, "fusion": fusion, "runs": runs,
                "mean": {k: statistics.mean(r["test"][k] for r in runs) for k in keys},
                "std": {k: statistics.stdev(r["test"][k] for r in runs) if len(runs) > 1 else 0.0 for k in keys},
            }
            if on_result is not None:
                on_result(results)
    return results


def results_table(results: dict) -> str:
    """Markdown table: test HR@10/20, NDCG@10/20 as mean ± std over seeds, best epochs, epochs run."""
    keys = ["HR@10", "HR@20", "NDCG@10", "NDCG@20"]
    lines = ["| backbone | variant | seeds | " + " | ".join(keys) + " | best epoch | epochs run | s / run |",
             "|---" * (len(keys) + 6) + "|"]
    for res in results.values():
        cells = [f"{res['mean'][k]:.4f} ± {res['std'][k]:.4f}" for k in keys]
        best = ",".join(str(r["best_epoch"]) for r in res["runs"])
        ran = ",".join(str(r.get("epochs_run", len(r["epochs"]))) for r in res["runs"])
        secs = statistics.mean(r["seconds"] for r in res["runs"])
        lines.append(f"| {NAMES[res['backbone']]} | {NAMES[res['fusion']]} | {len(res['runs'])} | "
                     + " | ".join(cells) + f" | {best} | {ran} | {secs:.0f} |")
    return "\n".join(lines)


def plot_results(results: dict, path: Path) -> None:
    """Validation NDCG@10 per epoch, one panel per backbone, one line per run (variant colour-coded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backbones = list(dict.fromkeys(r["backbone"] for r in results.values()))
    fig, axes = plt.subplots(1, len(backbones), figsize=(5 * len(backbones), 3.5), squeeze=False)
    colors = {"none": "#7f7f7f", "semantic": "#9467bd", "add": "#1f77b4", "gate": "#d62728", "concat": "#2ca02c"}
    for ax, backbone in zip(axes[0], backbones, strict=True):
        for res in results.values():
            if res["backbone"] != backbone:
                continue
            for i, run in enumerate(res["runs"]):
                ep = [e["epoch"] for e in run["epochs"]]
                ax.plot(ep, [e["valid_NDCG@10"] for e in run["epochs"]], color=colors.get(res["fusion"], "k"),
                        alpha=0.8, label=NAMES[res["fusion"]] if i == 0 else None)
        ax.set_title(NAMES[backbone])
        ax.set_xlabel("epoch")
        ax.set_ylabel("valid NDCG@10")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _save_checkpoint(path: Path, model: torch.nn.Module, meta: dict) -> None:
    def write(f):
        torch.save({"state_dict": model.state_dict(), "meta": meta}, f)

    _atomic_write(path, write)


def run_demo(out: str | Path, epochs: int = 2, log=print) -> dict:
    """The `fastrec demo` step: synthetic data -> fallback extraction -> embeddings -> IDs vs KIRec (gate)."""
    from fastrec.data import synthetic

    out = Path(out) / "kirec"
    folder = synthetic(out / "data")
    data, semantic, _ = prepare(folder, out, log=log)
    split = leave_one_out(data)
    results = compare(split, semantic, seeds=(0,), fusions=("none", "gate"), epochs=epochs, log=log)
    table = results_table(results)
    log("[kirec] synthetic demo, test metrics (1 seed):\n" + table)
    plot_results(results, out / "kirec_valid_ndcg.png")
    return results


# ----------------------------------------------------------------------------- CLI


def _needs_semantic(fusions: Sequence[str]) -> bool:
    return any(f != "none" for f in fusions)


def _train_kw(args) -> dict:
    return dict(d=args.d, max_len=args.max_len)


def _cfg(args, seed: int | None = None):
    """The engine's TrainConfig from the shared training flags (one per seed in `compare`)."""
    from dataclasses import replace

    from fastrec.train import config_from_args

    cfg = config_from_args(args, backbone=getattr(args, "backbone", None), fusion=getattr(args, "fusion", None))
    return cfg if seed is None else replace(cfg, seed=seed, resume=None)


def _prepare_device(args) -> str | None:
    return None if args.device in (None, "auto") else args.device


def _cmd_extract(args) -> int:
    prepare(args.data, args.out, args.model, args.batch_size, encoder=args.encoder, device=args.device,
            progress=args.progress)
    print(f"wrote {Path(args.out) / 'attributes.jsonl'} and the attribute embeddings in {args.out}")
    return 0


def _cmd_train(args) -> int:
    data, semantic, info = prepare(args.data, args.out, args.model, encoder=args.encoder,
                                   semantic=_needs_semantic([args.fusion]), device=_prepare_device(args),
                                   progress=args.progress)
    split = leave_one_out(data)
    run = Path(args.out) / f"{args.backbone}-{args.fusion}-s{args.seed}"
    model, hist = train(split, semantic, args.fusion, init=args.init, backbone=args.backbone, cfg=_cfg(args),
                        out=run, **_train_kw(args))
    path = Path(args.out) / f"{args.backbone}-{args.fusion}-s{args.seed}.pt"
    meta = {"backbone": args.backbone, "fusion": args.fusion, "init": args.init, "num_items": data.num_items,
            "d": args.d, "max_len": args.max_len, "semantic_dim": None if semantic is None else semantic.shape[1],
            "info": info, "history": hist}
    _save_checkpoint(path, model, meta)
    print(json.dumps({"valid": hist.get("valid"), "test": hist["test"], "best_epoch": hist["best_epoch"],
                      "epochs_run": hist["epochs_run"], "encoder": info["encoder"],
                      "attribute_sources": info["attribute_sources"]}, indent=2))
    print(f"wrote {path} (and the engine's run folder {run})")
    return 0


def _cmd_eval(args) -> int:
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    meta = ckpt["meta"]
    data = load_lcrec(args.data)
    if data.num_items != meta["num_items"]:
        raise ValueError(f"checkpoint has {meta['num_items']} items but {args.data} has {data.num_items}")
    placeholder = None
    if meta["fusion"] != "none":  # the semantic buffer is restored from the checkpoint; PCA init needs variance
        placeholder = torch.randn(data.num_items, meta["semantic_dim"])
    model = build_model(data.num_items, placeholder, meta["fusion"], d=meta.get("d", 64), init="random",
                        max_len=meta.get("max_len", 50), backbone=meta.get("backbone", "sasrec"))
    model.load_state_dict(ckpt["state_dict"])
    model.to(_prepare_device(args) or default_device())
    split = leave_one_out(data)
    print(json.dumps({stage: evaluate(model, split, stage) for stage in ("valid", "test")}, indent=2))
    return 0


def _cmd_compare(args) -> int:
    data, semantic, info = prepare(args.data, args.out, args.model, encoder=args.encoder,
                                   semantic=_needs_semantic(args.fusions), device=_prepare_device(args),
                                   progress=args.progress)
    split = leave_one_out(data)
    out = Path(args.out)
    head = (f"data {args.data}; encoder {info['encoder']}; attributes {info['attribute_sources']}; "
            f"max {args.epochs} epochs, patience {args.patience}, d {args.d}, max_len {args.max_len}, "
            f"lr {args.lr}, batch {args.batch_size}, device {args.device}, dtype {args.dtype}\n\n")

    def save(results: dict) -> None:
        table = results_table(results)
        _atomic_write(out / "results.md", lambda f: f.write((head + table + "\n").encode()))
        _atomic_write(out / "results.json", lambda f: f.write(json.dumps({"info": info, "results": results},
                                                                         indent=1).encode()))

    results = compare(split, semantic, seeds=args.seeds, fusions=args.fusions, backbones=args.backbones,
                      on_result=save, cfg_for_seed=lambda seed: _cfg(args, seed), **_train_kw(args))
    plot_results(results, out / "valid_ndcg.png")
    print(head + results_table(results))
    return 0


def add_parser(sub) -> None:
    """Register `fastrec kirec extract|train|eval|compare` (train/compare take the engine's shared flags)."""
    from fastrec.train import add_training_args

    p = sub.add_parser("kirec", help="KIRec: LLM attribute extraction + semantic fusion in SASRec/GRU4Rec/BERT4Rec")
    ks = p.add_subparsers(dest="kirec_command", required=True)

    def common(q, out=True, device=True):
        q.add_argument("--data", required=True, help="LC-Rec data folder (<name>.inter.json[, <name>.item.json])")
        if device:
            q.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
        if out:
            q.add_argument("--out", default="runs/kirec", help="folder for attributes, embeddings, checkpoints")
            q.add_argument("--model", default=None,
                           help="local HF causal LM for attribute extraction (default: structured fallback)")
            q.add_argument("--encoder", default=None,
                           help="attribute text encoder: a local HF folder (mean pooling), 'generator' (the "
                                "--model LLM's last hidden states), default: the offline all-MiniLM-L6-v2")

    e = ks.add_parser("extract", help="extract item attributes (LLM or structured fallback) and embed them")
    common(e)
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    e.set_defaults(func=_cmd_extract)
    for name, fn, hlp in (("train", _cmd_train, "train one backbone with IDs only, semantic only or KIRec fusion"),
                          ("compare", _cmd_compare, "backbones x variants over several seeds (table, JSON, plot)")):
        t = ks.add_parser(name, help=hlp)
        common(t, device=False)
        # the engine's flags (--device --dtype --batch-size --grad-accum --lr --epochs/--steps --patience
        # --save-every --resume --seed ...); --epochs is the cap, early stopping on valid NDCG@10 decides
        add_training_args(t, batch_size=256, lr=1e-3, epochs=100, patience=5, max_grad_norm=0.0)
        t.add_argument("--d", type=int, default=64, help="hidden size of the backbone")
        t.add_argument("--max-len", type=int, default=50)
        if name == "train":
            t.add_argument("--backbone", choices=tuple(BACKBONES), default="sasrec")
            t.add_argument("--fusion", choices=FUSIONS, default="gate")
            t.add_argument("--init", choices=("pca", "whiten", "random"), default="pca")
        else:
            t.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
            t.add_argument("--backbones", nargs="+", choices=tuple(BACKBONES), default=["sasrec"])
            t.add_argument("--fusions", nargs="+", choices=FUSIONS, default=["none", "gate"])
        t.set_defaults(func=fn)
    v = ks.add_parser("eval", help="full-ranking HR/NDCG@10/20 of a saved checkpoint")
    common(v, out=False)
    v.add_argument("--checkpoint", required=True)
    v.set_defaults(func=_cmd_eval)


__all__ = ["BACKBONES", "FALLBACK", "FUSIONS", "add_parser", "attribute_embeddings", "attribute_sources",
           "build_model", "cloze_sequences", "compare", "evaluate", "extract_attributes", "plot_results", "prepare",
           "results_table", "run_demo", "structured_attributes", "train", "training_pairs"]
