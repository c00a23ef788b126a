"""KIRec: LLM knowledge injection into sequential recommendation (Bai and Jia, 2026), end to end.

    fastrec kirec extract --data ../shared/data/amazon-scientific --out runs/kirec [--model PATH]
    fastrec kirec train   --data ../shared/data/amazon-scientific --out runs/kirec --fusion gate --seed 0
    fastrec kirec eval    --data ../shared/data/amazon-scientific --checkpoint runs/kirec/model-gate-s0.pt
    fastrec kirec compare --data ../shared/data/amazon-scientific --out runs/kirec --seeds 0 1 2

1. extract: a local Hugging Face causal LM lists each item's attributes (brand, category, material,
   function, audience, ...) from its title and description (batched generate, cached to JSONL). Without
   a generator, a deterministic structured extraction from the item's own fields is used instead and
   every record says so (`"source": "structured-fallback"`).
2. embed: the attribute text goes through the offline sentence encoder (`fastrec.data.text_embeddings`).
3. reduce + fuse: `SemanticFusionEmbedding` (PCA/whitening-initialised Linear(D -> d), fused with the
   item-ID rows by `fastrec.ops.semantic_fusion_lookup`) inside `fastrec.nn.SASRec`.
4. train with cross-entropy over the full item set; evaluate by full ranking, HR@10/20 and NDCG@10/20,
   with each user's history excluded from the ranking (RecBole's full-sort protocol; the split is
   LC-Rec's leave-one-out), model selected on validation NDCG@10.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from fastrec.data import Interactions, LeaveOneOutSplit, leave_one_out, load_lcrec  # noqa: F401 (load_lcrec re-exported)
from fastrec.eval import evaluate_topk
from fastrec.nn import IDEmbedding, SASRec, SemanticFusionEmbedding
from fastrec.ops import topk_scores

FALLBACK = "structured-fallback"
PROMPT = (
    "List the attributes of this product as 'key: value' lines (brand, category, material, function, "
    "audience, and any other useful attribute).\nTitle: {title}\nDescription: {description}\nAttributes:\n"
)
FUSIONS = ("none", "add", "gate", "concat")


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


def _llm_attributes(prompts: list[str], model, tokenizer, batch_size: int, max_new_tokens: int,
                    desc: str) -> list[str]:
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    outs = []
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
        batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                          max_length=512).to(device)
        with torch.no_grad():
            gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        outs += [t.strip() for t in tokenizer.batch_decode(gen[:, batch["input_ids"].shape[1]:],
                                                           skip_special_tokens=True)]
    return outs


def extract_attributes(item_text: dict[int, dict[str, str]], num_items: int, cache: str | Path | None = None,
                       model=None, tokenizer=None, model_name: str = "", batch_size: int = 8,
                       max_new_tokens: int = 64) -> dict[int, dict]:
    """Attribute text of every item 0..num_items-1: {item: {"item", "source", "attributes"}}.

    With `model`/`tokenizer` (a local HF causal LM), the LM answers PROMPT for each item (batched,
    greedy); without them the structured fallback is used and labelled as such. Records already in the
    `cache` JSONL (from the same source) are reused; the cache is rewritten atomically at the end.
    """
    source = f"llm:{model_name or type(model).__name__}" if model is not None else FALLBACK
    cache = Path(cache) if cache is not None else None
    records = {k: v for k, v in (_read_jsonl(cache) if cache else {}).items() if v.get("source") == source}
    todo = [i for i in range(num_items) if i not in records]
    if model is None:
        for i in todo:
            records[i] = {"item": i, "source": source, "attributes": structured_attributes(item_text.get(i, {}))}
    elif todo:
        prompts = [PROMPT.format(title=_clean(item_text.get(i, {}).get("title", "")),
                                 description=" ".join(_clean(item_text.get(i, {}).get("description", "")).split()[:80]))
                   for i in todo]
        for i, text in zip(todo, _llm_attributes(prompts, model, tokenizer, batch_size, max_new_tokens,
                                                 "extract attributes"), strict=True):
            records[i] = {"item": i, "source": source, "attributes": text}
    if cache is not None and todo:
        _write_jsonl(cache, records)
    return {i: records[i] for i in range(num_items)}


# ----------------------------------------------------------------------------- 2. embeddings


def attribute_embeddings(records: dict[int, dict], encoder=None, tokenizer=None, cache: str | Path | None = None,
                         batch_size: int = 64) -> torch.Tensor:
    """[I, D] fp32 embedding of every item's attribute text (offline encoder, `fastrec.data.text_embeddings`).

    Defined behaviour for an empty attribute text: the row is the mean of the non-empty rows, so after
    the reduction's centring it carries no semantic signal and the item relies on its ID row.
    """
    from fastrec.data import text_embeddings

    texts = [records[i]["attributes"] for i in range(len(records))]
    empty = torch.tensor([not t.strip() for t in texts], dtype=torch.bool)
    if bool(empty.all()):
        raise ValueError("every item has an empty attribute text; nothing to embed")
    kept = [t for t in texts if t.strip()]
    part = text_embeddings(kept, model=encoder, tokenizer=tokenizer, batch_size=batch_size, cache=cache).float()
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


def _trim(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the leading columns that are padding in every row of the first tensor (left-padded batches):
    short sequences then cost attention over their own length only; positions stay right-aligned."""
    used = (tensors[0] != 0).any(0)
    first = int(used.int().argmax()) if bool(used.any()) else tensors[0].shape[1] - 1
    return tuple(t[:, first:] for t in tensors)


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


@torch.no_grad()
def evaluate(model: SASRec, split: LeaveOneOutSplit, stage: str = "test", ks: Sequence[int] = (10, 20),
             batch_size: int = 512, inputs=None) -> dict[str, float]:
    """Full-ranking HR@k / NDCG@k on the valid or test targets (history items excluded)."""
    model.eval()
    seqs, targets, (ex_ptr, ex_idx) = inputs or _eval_inputs(split, stage, model.max_len)
    table = model.item_table()
    top = []
    for start in range(0, seqs.shape[0], batch_size):
        (batch,) = _trim(seqs[start:start + batch_size])
        q = model(batch)
        lo = int(ex_ptr[start])
        end = min(start + batch_size, seqs.shape[0])
        part = (ex_ptr[start:end + 1] - lo, ex_idx[lo:int(ex_ptr[end])])
        top.append(_full_ranking_topk(q, table, max(ks), part))
    top = torch.cat(top) if top else torch.empty(0, max(ks), dtype=torch.int64)
    return evaluate_topk(top, targets, ks=ks, metrics=("HR", "NDCG"))


def build_model(num_items: int, semantic: torch.Tensor | None, fusion: str = "gate", d: int = 64,
                init: str = "pca", max_len: int = 50, dropout: float = 0.2) -> SASRec:
    """SASRec over items 1..num_items (0 = padding) with plain IDs (fusion "none") or KIRec fusion."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if fusion == "none":
        emb = IDEmbedding(num_items + 1, d)
    else:
        if semantic is None or semantic.shape[0] != num_items:
            raise ValueError(f"semantic must be [{num_items}, D] for fusion {fusion!r}")
        table = torch.cat([torch.zeros(1, semantic.shape[1]), semantic.float()])  # row 0 = padding
        emb = SemanticFusionEmbedding(table, d, mode=fusion, padding_idx=0, init=init)
    return SASRec(num_items + 1, d=d, max_len=max_len, dropout=dropout, item_embedding=emb)


def train(split: LeaveOneOutSplit, semantic: torch.Tensor | None, fusion: str = "gate", epochs: int = 10,
          batch_size: int = 256, lr: float = 1e-3, seed: int = 0, d: int = 64, max_len: int = 50,
          init: str = "pca", weight_decay: float = 0.0, log=print) -> tuple[SASRec, dict]:
    """Train SASRec (IDs only or with KIRec fusion); keep the epoch with the best validation NDCG@10.

    Returns the model (best state loaded) and a history {"epochs": [...], "best_epoch", "valid", "test", "seconds"}.
    """
    torch.manual_seed(seed)
    model = build_model(split.data.num_items, semantic, fusion, d, init, max_len)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    inputs, targets = training_pairs(split, max_len)
    valid_inputs = _eval_inputs(split, "valid", max_len)
    gen = torch.Generator().manual_seed(seed)
    history = {"epochs": [], "fusion": fusion, "seed": seed}
    best, best_state = -1.0, None
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(inputs.shape[0], generator=gen)
        total, steps = 0.0, 0
        bar = tqdm(range(0, len(order), batch_size), desc=f"{fusion} s{seed} epoch {epoch + 1}/{epochs}",
                   unit="batch", leave=False)
        for start in bar:
            idx = order[start:start + batch_size]
            loss = model.loss(*_trim(inputs[idx], targets[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
            bar.set_postfix(loss=f"{total / steps:.3f}")
        metrics = evaluate(model, split, "valid", inputs=valid_inputs)
        history["epochs"].append({"epoch": epoch + 1, "loss": total / max(steps, 1), **{f"valid_{k}": v
                                                                                         for k, v in metrics.items()}})
        log(f"[kirec] {fusion} seed {seed} epoch {epoch + 1}: loss {total / max(steps, 1):.4f} "
            f"valid NDCG@10 {metrics['NDCG@10']:.4f} HR@10 {metrics['HR@10']:.4f}")
        if metrics["NDCG@10"] > best:
            best, best_state = metrics["NDCG@10"], {k: v.clone() for k, v in model.state_dict().items()}
            history["best_epoch"], history["valid"] = epoch + 1, metrics
    if best_state is not None:
        model.load_state_dict(best_state)
    history["test"] = evaluate(model, split, "test")
    history["seconds"] = time.perf_counter() - t0
    return model, history


# ----------------------------------------------------------------------------- pipeline pieces for the CLI


def load_generator(path: str):
    """A local HF causal LM and its tokenizer (offline)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    return model, tok


def prepare(data_dir: str | Path, out: str | Path, generator: str | None = None, batch_size: int = 8,
            log=print) -> tuple[Interactions, torch.Tensor]:
    """Load the data set, extract (cached JSONL) and embed (cached) the attributes: (data, semantic [I, D])."""
    data = load_lcrec(data_dir)
    out = Path(out)
    model = tok = None
    if generator:
        model, tok = load_generator(generator)
    records = extract_attributes(data.item_text, data.num_items, out / "attributes.jsonl", model, tok,
                                 model_name=Path(generator).name if generator else "", batch_size=batch_size)
    sources = {r["source"] for r in records.values()}
    empty = sum(not r["attributes"].strip() for r in records.values())
    log(f"[kirec] attributes of {len(records)} items from {', '.join(sorted(sources))}"
        + (" (no generator model given: deterministic extraction from the item fields, not an LLM)"
           if FALLBACK in sources else "") + f"; {empty} empty")
    semantic = attribute_embeddings(records, cache=out / "attribute_embeddings.npy")
    return data, semantic


def compare(split: LeaveOneOutSplit, semantic: torch.Tensor, seeds: Sequence[int] = (0, 1, 2),
            fusions: Sequence[str] = ("none", "gate"), log=print, **train_kw) -> dict:
    """IDs-only vs KIRec fusion, same budget, several seeds: {fusion: {"runs": [...], "mean": .., "std": ..}}."""
    results: dict = {}
    for fusion in fusions:
        runs = []
        for seed in seeds:
            _, hist = train(split, semantic, fusion, seed=seed, log=log, **train_kw)
            runs.append(hist)
        keys = list(runs[0]["test"])
        results[fusion] = {
            "runs": runs,
            "mean": {k: statistics.mean(r["test"][k] for r in runs) for k in keys},
            "std": {k: statistics.stdev(r["test"][k] for r in runs) if len(runs) > 1 else 0.0 for k in keys},
        }
    return results


def results_table(results: dict) -> str:
    """Markdown table: test HR@10/20, NDCG@10/20 as mean ± std over seeds."""
    keys = ["HR@10", "HR@20", "NDCG@10", "NDCG@20"]
    lines = ["| model | seeds | " + " | ".join(keys) + " | best epoch | s / run |",
             "|---" * (len(keys) + 4) + "|"]
    names = {"none": "SASRec (IDs only)", "add": "SASRec + KIRec (add)", "gate": "SASRec + KIRec (gate)",
             "concat": "SASRec + KIRec (concat)"}
    for fusion, res in results.items():
        cells = [f"{res['mean'][k]:.4f} ± {res['std'][k]:.4f}" for k in keys]
        epochs = ",".join(str(r["best_epoch"]) for r in res["runs"])
        secs = statistics.mean(r["seconds"] for r in res["runs"])
        lines.append(f"| {names[fusion]} | {len(res['runs'])} | " + " | ".join(cells) + f" | {epochs} | {secs:.0f} |")
    return "\n".join(lines)


def plot_results(results: dict, path: Path) -> None:
    """Validation NDCG@10 per epoch, one line per run (fusion colour-coded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    colors = {"none": "#7f7f7f", "add": "#1f77b4", "gate": "#d62728", "concat": "#2ca02c"}
    for fusion, res in results.items():
        for i, run in enumerate(res["runs"]):
            ep = [e["epoch"] for e in run["epochs"]]
            ax.plot(ep, [e["valid_NDCG@10"] for e in run["epochs"]], color=colors.get(fusion, "k"), alpha=0.8,
                    label=fusion if i == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid NDCG@10")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _save_checkpoint(path: Path, model: SASRec, meta: dict) -> None:
    def write(f):
        torch.save({"state_dict": model.state_dict(), "meta": meta}, f)

    _atomic_write(path, write)


def run_demo(out: str | Path, epochs: int = 2, log=print) -> dict:
    """The `fastrec demo` step: synthetic data -> fallback extraction -> embeddings -> IDs vs KIRec (gate)."""
    from fastrec.data import synthetic

    out = Path(out) / "kirec"
    folder = synthetic(out / "data")
    data, semantic = prepare(folder, out, log=log)
    split = leave_one_out(data)
    results = compare(split, semantic, seeds=(0,), fusions=("none", "gate"), epochs=epochs, log=log)
    table = results_table(results)
    log("[kirec] synthetic demo, test metrics (1 seed):\n" + table)
    plot_results(results, out / "kirec_valid_ndcg.png")
    return results


# ----------------------------------------------------------------------------- CLI


def _cmd_extract(args) -> int:
    prepare(args.data, args.out, args.model, args.batch_size)
    print(f"wrote {Path(args.out) / 'attributes.jsonl'} and {Path(args.out) / 'attribute_embeddings.npy'}")
    return 0


def _cmd_train(args) -> int:
    data, semantic = prepare(args.data, args.out, args.model)
    split = leave_one_out(data)
    model, hist = train(split, semantic, args.fusion, epochs=args.epochs, batch_size=args.batch_size,
                        lr=args.lr, seed=args.seed, init=args.init)
    path = Path(args.out) / f"model-{args.fusion}-s{args.seed}.pt"
    meta = {"fusion": args.fusion, "init": args.init, "num_items": data.num_items,
            "semantic_dim": semantic.shape[1], "history": hist}
    _save_checkpoint(path, model, meta)
    print(json.dumps({"valid": hist["valid"], "test": hist["test"], "best_epoch": hist["best_epoch"]}, indent=2))
    print(f"wrote {path}")
    return 0


def _cmd_eval(args) -> int:
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    meta = ckpt["meta"]
    data = load_lcrec(args.data)
    if data.num_items != meta["num_items"]:
        raise ValueError(f"checkpoint has {meta['num_items']} items but {args.data} has {data.num_items}")
    placeholder = torch.zeros(data.num_items, meta["semantic_dim"]) if meta["fusion"] != "none" else None
    if placeholder is not None:  # the semantic buffer is restored from the checkpoint; PCA init needs variance
        placeholder.normal_()
    model = build_model(data.num_items, placeholder, meta["fusion"], init="random")
    model.load_state_dict(ckpt["state_dict"])
    split = leave_one_out(data)
    print(json.dumps({stage: evaluate(model, split, stage) for stage in ("valid", "test")}, indent=2))
    return 0


def _cmd_compare(args) -> int:
    data, semantic = prepare(args.data, args.out, args.model)
    split = leave_one_out(data)
    results = compare(split, semantic, seeds=args.seeds, fusions=args.fusions, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr)
    out = Path(args.out)
    table = results_table(results)
    _atomic_write(out / "results.md", lambda f: f.write((table + "\n").encode()))
    slim = {f: {k: v for k, v in r.items()} for f, r in results.items()}
    _atomic_write(out / "results.json", lambda f: f.write(json.dumps(slim, indent=1).encode()))
    plot_results(results, out / "valid_ndcg.png")
    print(table)
    return 0


def add_parser(sub) -> None:
    """Register `fastrec kirec extract|train|eval|compare`."""
    p = sub.add_parser("kirec", help="KIRec: LLM attribute extraction + semantic fusion in SASRec")
    ks = p.add_subparsers(dest="kirec_command", required=True)

    def common(q, out=True):
        q.add_argument("--data", required=True, help="LC-Rec data folder (<name>.inter.json, <name>.item.json)")
        if out:
            q.add_argument("--out", default="runs/kirec", help="folder for attributes, embeddings, checkpoints")
            q.add_argument("--model", default=None,
                           help="local HF causal LM for attribute extraction (default: structured fallback)")

    e = ks.add_parser("extract", help="extract item attributes (LLM or structured fallback) and embed them")
    common(e)
    e.add_argument("--batch-size", type=int, default=8)
    e.set_defaults(func=_cmd_extract)
    for name, fn, hlp in (("train", _cmd_train, "train SASRec with IDs only or KIRec fusion"),
                          ("compare", _cmd_compare, "IDs only vs KIRec over several seeds (table, JSON, plot)")):
        t = ks.add_parser(name, help=hlp)
        common(t)
        t.add_argument("--epochs", type=int, default=10)
        t.add_argument("--batch-size", type=int, default=256)
        t.add_argument("--lr", type=float, default=1e-3)
        if name == "train":
            t.add_argument("--fusion", choices=FUSIONS, default="gate")
            t.add_argument("--seed", type=int, default=0)
            t.add_argument("--init", choices=("pca", "whiten", "random"), default="pca")
        else:
            t.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
            t.add_argument("--fusions", nargs="+", choices=FUSIONS, default=["none", "gate"])
        t.set_defaults(func=fn)
    v = ks.add_parser("eval", help="full-ranking HR/NDCG@10/20 of a saved checkpoint")
    common(v, out=False)
    v.add_argument("--checkpoint", required=True)
    v.set_defaults(func=_cmd_eval)


__all__ = ["FALLBACK", "add_parser", "attribute_embeddings", "build_model", "compare", "evaluate",
           "extract_attributes", "plot_results", "prepare", "results_table", "run_demo", "structured_attributes",
           "train", "training_pairs"]
