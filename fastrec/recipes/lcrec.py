"""LC-Rec end to end: index items, tune a causal LM on the alignment tasks, evaluate by constrained beam search.

    fastrec lcrec index --data DIR --out RUN      # text embeddings -> RQ-VAE -> <name>.index.json (0 collisions)
    fastrec lcrec train --data DIR --out RUN      # tiny Llama from config + local tokenizer, six tasks
    fastrec lcrec eval  --data DIR --out RUN      # 20-beam trie-constrained generation, HR@1/5/10, NDCG@5/10

Any local HF causal LM works through `--model PATH`; without it a tiny Llama is built from a config with a
tokenizer trained here on the data set's text (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from fastrec.data import leave_one_out, load_lcrec
from fastrec.data.semantic_index import codes_to_index, index_to_codes, index_tokens, load_index, save_index
from fastrec.eval import evaluate_topk
from fastrec.integrations.hf import ItemTrieLogitsProcessor, build_local_tokenizer
from fastrec.nn.rqvae import RQVAE
from fastrec.recipes.lcrec_index import build_index, train_rqvae
from fastrec.recipes.lcrec_tasks import TASKS, TEMPLATE, LCRecCollator, LCRecDataset, add_index_tokens, build_tasks


# ----------------------------------------------------------------------------------------------------- index
def index_items(folder: str | Path, out: str | Path, epochs: int = 200, hidden=(2048, 1024, 512, 256, 128, 64),
                levels: int = 4, codebook_size: int = 256, encoder: str | None = None, progress: bool = True,
                standardize: bool = True) -> dict:
    """Embed item texts, train the RQ-VAE, build a collision-free index; writes <name>.index.json, the
    RQ-VAE weights and index_stats.json in `out`; returns the stats (with timings).

    `standardize` scales each embedding dimension to zero mean and unit variance first (LC-Rec feeds raw
    LLaMA states, which are large; raw MiniLM vectors collapse the RQ-VAE latent in short runs)."""
    from fastrec.data.text import item_texts, text_embeddings

    t0 = time.perf_counter()
    data = load_lcrec(folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = {str(i): data.item_text.get(i, {}) for i in range(data.num_items)}
    texts = item_texts(items)
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    texts = [t if t.strip() else f"item {i}" for i, t in enumerate(texts)]  # no text: the id stands in
    emb = text_embeddings(texts, model=encoder, cache=out / "item_emb.npy", progress=progress)
    t_emb = time.perf_counter() - t0
    if standardize:  # sentence-encoder outputs are small and near-isotropic; unit scale keeps the latent spread
        emb = (emb - emb.mean(0)) / emb.std(0).clamp_min(1e-6)
    torch.manual_seed(0)
    model = RQVAE(emb.shape[1], hidden=hidden, levels=levels, codebook_size=codebook_size)
    t1 = time.perf_counter()
    history = train_rqvae(model, emb, epochs=epochs, progress=progress)
    t_train = time.perf_counter() - t1
    codes, stats = build_index(model, emb)
    save_index(codes_to_index(codes), out / f"{data.name}.index.json")
    torch.save(model.state_dict(), out / "rqvae.pt")
    stats.update(items_without_text=len(empty), embed_seconds=t_emb, train_seconds=t_train, epochs=epochs,
                 total_seconds=time.perf_counter() - t0, final_train=history[-1] if history else {})
    (out / "index_stats.json").write_text(json.dumps(stats, indent=2))
    return stats


# ----------------------------------------------------------------------------------------------------- model
def tiny_llama(tokenizer, hidden: int = 128, layers: int = 2, heads: int = 4, seed: int = 0):
    """A small Llama built from a config (random init) sized to `tokenizer`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    return LlamaForCausalLM(config)


def train_lm(model, dataset, collator, steps: int = 100, batch_size: int = 16, lr: float = 1e-3,
             warmup: int = 10, seed: int = 0, progress: bool = True) -> list[float]:
    """A plain AdamW loop (warm-up, clipping) over shuffled batches; returns the loss per step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)))
    losses: list[float] = []
    model.train()
    order: list[int] = []
    for _ in tqdm(range(steps), desc="lc-rec tune", unit="step", disable=not progress):
        if len(order) < batch_size:
            order += torch.randperm(len(dataset), generator=g).tolist()
        batch = collator([dataset[i] for i in order[:batch_size]])
        order = order[batch_size:]
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


# ------------------------------------------------------------------------------------------------------ eval
def seqrec_prompt(index: dict, history: list[int], max_history: int = 20) -> str:
    """The first seqrec prompt of the pool (evaluation uses one fixed prompt)."""
    from fastrec.recipes.lcrec_tasks import PROMPTS, _spell

    return TEMPLATE.format(instruction=PROMPTS["seqrec"][0].format(history=_spell(index, history[-max_history:])))


@torch.no_grad()
def recommend(model, tokenizer, processor: ItemTrieLogitsProcessor, prompts: list[str], beams: int = 20,
              k: int = 10) -> torch.Tensor:
    """Top-k item ids [len(prompts), k] by trie-constrained beam search (-1 pads rows with fewer items)."""
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**batch, num_beams=beams, num_return_sequences=beams, do_sample=False,
                         max_new_tokens=processor.levels + 1, logits_processor=[processor],
                         output_scores=True, return_dict_in_generate=True, early_stopping=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    items = processor.decode(out.sequences, batch["input_ids"].shape[1])
    scores = out.sequences_scores.view(len(prompts), beams)
    ranked = torch.full((len(prompts), k), -1, dtype=torch.long)
    for b in range(len(prompts)):
        order = torch.argsort(scores[b], descending=True, stable=True).tolist()
        seen: list[int] = []
        for j in order:
            for item in items[b * beams + j]:  # an index shared by several items names them all
                if item not in seen:
                    seen.append(item)
        ranked[b, : min(k, len(seen))] = torch.tensor(seen[:k], dtype=torch.long)
    return ranked


def evaluate(model, tokenizer, index: dict, histories: list[list[int]], targets: torch.Tensor, beams: int = 20,
             batch_size: int = 8, progress: bool = True) -> dict[str, float]:
    """HR@1/5/10 and NDCG@5/10 over the users, generated indices mapped back to items."""
    processor = ItemTrieLogitsProcessor(index, tokenizer)
    tokenizer.padding_side = "left"
    ranked = []
    for s in tqdm(range(0, len(histories), batch_size), desc="lc-rec eval", unit="batch", disable=not progress):
        prompts = [seqrec_prompt(index, h) for h in histories[s:s + batch_size]]
        ranked.append(recommend(model, tokenizer, processor, prompts, beams=beams, k=10))
    topk = torch.cat(ranked)
    res = evaluate_topk(topk.clamp_min(0) + (topk < 0) * (1 << 40), targets, ks=(1, 5, 10), metrics=("HR",))
    res.update(evaluate_topk(topk.clamp_min(0) + (topk < 0) * (1 << 40), targets, ks=(5, 10), metrics=("NDCG",)))
    return res


# ---------------------------------------------------------------------------------------------- train + eval
def _load(folder: str | Path, index_path: str | Path | None):
    data = load_lcrec(folder)
    path = Path(index_path) if index_path else None
    if path is None:
        raise ValueError("index: pass --index (made by `fastrec lcrec index` or elsewhere)")
    index = load_index(path)
    if len(index) != data.num_items:
        raise ValueError(f"index: {path} has {len(index)} items but the data set has {data.num_items}")
    return data, index


def train_and_eval(folder: str | Path, index_path: str | Path, out: str | Path, steps: int = 200,
                   batch_size: int = 16, beams: int = 20, max_eval_users: int | None = 500,
                   tasks=TASKS, hidden: int = 128, layers: int = 2, model_path: str | None = None,
                   progress: bool = True, seed: int = 0, max_per_task: int | None = 20_000) -> dict:
    """Tune a (tiny or local) causal LM on the alignment tasks, then evaluate on the test users.

    `max_per_task` caps the examples kept per task (a seeded sample) so tokenizing stays quick when the
    tuning steps cannot see them all anyway; None keeps every example.
    """
    t0 = time.perf_counter()
    data, index = _load(folder, index_path)
    split = leave_one_out(data)
    levels = len(next(iter(index.values())))
    codebook_size = int(index_to_codes(index).max()) + 1
    train_seqs = [[int(i) for i in s] for s in split.train.sequences()]
    examples = build_tasks(train_seqs, index, data.item_text, tasks=tasks, seed=seed)
    if max_per_task is not None:
        rng = random.Random(seed)
        by_task: dict[str, list] = {}
        for ex in examples:
            by_task.setdefault(ex[0], []).append(ex)
        examples = [e for t in by_task.values() for e in (rng.sample(t, max_per_task) if len(t) > max_per_task
                                                         else t)]
    if model_path:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        texts = [p + " " + r for _, p, r in examples[:20000]]
        tokenizer = build_local_tokenizer(texts, vocab_size=4000)
        model = tiny_llama(tokenizer, hidden=hidden, layers=layers, seed=seed)
    add_index_tokens(model, tokenizer, {"all": index_tokens(levels, codebook_size)})
    tokenizer.padding_side = "right"
    dataset = LCRecDataset(examples, tokenizer, max_length=384)
    t1 = time.perf_counter()
    losses = train_lm(model, dataset, LCRecCollator(tokenizer), steps=steps, batch_size=batch_size,
                      progress=progress, seed=seed)
    t_train = time.perf_counter() - t1
    indptr, items = split.history("test")
    histories = [items[indptr[u]:indptr[u + 1]].tolist() for u in range(len(split.test_users))]
    targets = split.test_targets
    if max_eval_users is not None and len(histories) > max_eval_users:
        pick = torch.randperm(len(histories), generator=torch.Generator().manual_seed(seed))[:max_eval_users]
        histories, targets = [histories[i] for i in pick.tolist()], targets[pick]
    t2 = time.perf_counter()
    metrics = evaluate(model, tokenizer, index, histories, targets, beams=beams, progress=progress)
    result = {"metrics": metrics, "examples": len(dataset), "steps": steps, "first_loss": losses[0],
              "last_loss": sum(losses[-10:]) / len(losses[-10:]), "train_seconds": t_train,
              "eval_seconds": time.perf_counter() - t2, "eval_users": len(histories), "beams": beams,
              "total_seconds": time.perf_counter() - t0}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lcrec_results.json").write_text(json.dumps(result, indent=2))
    return result


# ------------------------------------------------------------------------------------------------------- CLI
def add_parser(sub) -> None:
    p = sub.add_parser("lcrec", help="LC-Rec: index items, tune an LLM on the alignment tasks, evaluate")
    p.add_argument("stage", choices=["index", "train", "eval"], help="index; train (tune then evaluate); eval")
    p.add_argument("--data", required=True, help="LC-Rec data folder (<name>.inter.json, <name>.item.json)")
    p.add_argument("--out", default="results/lcrec", help="output folder")
    p.add_argument("--index", default=None, help="index JSON (train/eval; default <out>/<name>.index.json)")
    p.add_argument("--epochs", type=int, default=200, help="RQ-VAE epochs (index)")
    p.add_argument("--steps", type=int, default=200, help="LM tuning steps (train)")
    p.add_argument("--beams", type=int, default=20)
    p.add_argument("--eval-users", type=int, default=500, help="evaluate on this many test users (0 = all)")
    p.add_argument("--model", default=None, help="local HF causal LM folder (default: tiny Llama from config)")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    if args.stage == "index":
        stats = index_items(args.data, args.out, epochs=args.epochs)
        print(json.dumps(stats, indent=2))
        return 0
    index = args.index
    if index is None:
        name = load_lcrec(args.data).name
        index = Path(args.out) / f"{name}.index.json"
    steps = args.steps if args.stage == "train" else 0
    res = train_and_eval(args.data, index, args.out, steps=max(1, steps), beams=args.beams,
                         max_eval_users=args.eval_users or None, model_path=args.model)
    print(json.dumps(res, indent=2))
    return 0


def demo(out: str | Path, progress: bool = False) -> dict:
    """The LC-Rec part of `make demo` on the embedded synthetic data set, well under a minute."""
    from fastrec.data import synthetic

    t0 = time.perf_counter()
    out = Path(out) / "lcrec"
    folder = synthetic(out / "data", num_users=200, num_items=120)
    stats = index_items(folder, out, epochs=20, hidden=(256, 128, 64), levels=3, codebook_size=16,
                        progress=progress)
    res = train_and_eval(folder, out / "Synthetic.index.json", out, steps=25, batch_size=16, beams=10,
                         max_eval_users=32, hidden=64, progress=progress)
    summary = {"collision_rate": stats["collision_rate"], "index_seconds": stats["total_seconds"],
               **res["metrics"], "seconds": time.perf_counter() - t0}
    print("lc-rec demo:", json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
    return summary


