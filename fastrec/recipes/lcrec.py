"""LC-Rec end to end: index items, tune a causal LM on the alignment tasks, evaluate by constrained beam search.

    fastrec lcrec index     --data DIR --out DIR [--encoder PATH] [--levels 4 --codes 256 --rqvae-epochs 200]
    fastrec lcrec train     --data DIR --index FILE --out RUN [--model PATH] [--tasks seqrec,item2index,...]
                            [--task-caps seqrec=0,item2index=2000] [training flags: --steps --batch-size --lr
                            --dtype --grad-accum --lora ... --resume]
    fastrec lcrec eval      --run RUN [--eval-users N] [--beams 20]
    fastrec lcrec recommend --run RUN --user U [--k 10]

`train` tunes with `transformers.Trainer` (flags mapped by fastrec.train.training_arguments, so `torchrun`
/ `accelerate launch` run it on several processes, and `--dtype bf16`, `--lora`, `--gradient-checkpointing`
and `--resume` work) and writes RUN/model/: the model (save_pretrained, safetensors; a LoRA adapter with
the resized embeddings when --lora), its tokenizer, the index and lcrec.json (data folder, tasks, template,
model source), written atomically with a manifest. `eval` loads exactly that and evaluates every test user
(leave-one-out) by default: 20-beam generation constrained to existing items by a trie, HR@1/5/10,
NDCG@5/10 (also with the user's history removed from the ranked list, the protocol of fastrec's other
recommenders), per-user top-20 in RUN/eval/top20.jsonl. Without `--model` a small Llama is built from a
config with a word-level tokenizer made from the data set's prompts (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from fastrec import train as engine_lib
from fastrec.data import leave_one_out, load_lcrec
from fastrec.data.semantic_index import codes_to_index, index_to_codes, index_tokens, load_index, save_index
from fastrec.eval import evaluate_topk
from fastrec.integrations.hf import ItemTrieLogitsProcessor
from fastrec.nn.rqvae import RQVAE
from fastrec.recipes.lcrec_index import build_index, train_rqvae
from fastrec.recipes.lcrec_tasks import (
    TASKS,
    TEMPLATES,
    LCRecCollator,
    LCRecDataset,
    add_index_tokens,
    build_tasks,
    seqrec_prompt,
)

__all__ = ["index_items", "tiny_llama", "local_tokenizer", "train", "load_run", "evaluate", "evaluate_run", "recommend",
           "recommend_user", "cap_tasks", "add_parser", "demo"]

RUN_CONFIG = "lcrec.json"


def _auto_device(device: str = "auto") -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------------------- index
def index_items(folder: str | Path, out: str | Path, epochs: int = 200, hidden=(2048, 1024, 512, 256, 128, 64),
                levels: int = 4, codebook_size: int = 256, encoder: str | None = None, progress: bool = True,
                standardize: bool = True, batch_size: int = 1024, lr: float = 1e-3, device: str = "auto",
                seed: int = 0) -> dict:
    """Embed item texts, train the RQ-VAE, build a collision-free index; writes <name>.index.json, the
    RQ-VAE weights and index_stats.json in `out`; returns the stats (with timings).

    `encoder` is a local HF folder: a sentence encoder, or a causal LM whose last hidden state is mean-pooled
    (LC-Rec embeds with LLaMA this way); None is the offline all-MiniLM-L6-v2. Embedding and RQ-VAE training
    run on `device` (auto: the GPU when there is one); index building runs on the CPU (deterministic).
    `standardize` scales each embedding dimension to zero mean and unit variance first (LC-Rec feeds raw
    LLaMA states, which are large; raw MiniLM vectors collapse the RQ-VAE latent in short runs)."""
    from fastrec.data.text import item_texts, text_embeddings

    t0 = time.perf_counter()
    dev = _auto_device(device)
    data = load_lcrec(folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = {str(i): data.item_text.get(i, {}) for i in range(data.num_items)}
    texts = item_texts(items)
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    texts = [t if t.strip() else f"item {i}" for i, t in enumerate(texts)]  # no text: the id stands in
    emb = text_embeddings(texts, model=encoder, cache=out / "item_emb.npy", progress=progress, device=dev)
    t_emb = time.perf_counter() - t0
    if standardize:  # sentence-encoder outputs are small and near-isotropic; unit scale keeps the latent spread
        emb = (emb - emb.mean(0)) / emb.std(0).clamp_min(1e-6)
    torch.manual_seed(seed)
    model = RQVAE(emb.shape[1], hidden=hidden, levels=levels, codebook_size=codebook_size).to(dev)
    t1 = time.perf_counter()
    history = train_rqvae(model, emb.to(dev), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                          progress=progress)
    t_train = time.perf_counter() - t1
    model = model.cpu()
    codes, stats = build_index(model, emb)
    save_index(codes_to_index(codes), out / f"{data.name}.index.json")
    torch.save(model.state_dict(), out / "rqvae.pt")
    stats.update(items_without_text=len(empty), embed_seconds=t_emb, train_seconds=t_train, epochs=epochs,
                 encoder=str(encoder) if encoder else "all-MiniLM-L6-v2", device=str(dev),
                 total_seconds=time.perf_counter() - t0, final_train=history[-1] if history else {})
    (out / "index_stats.json").write_text(json.dumps(stats, indent=2))
    return stats


# ----------------------------------------------------------------------------------------------------- model
def tiny_llama(tokenizer, hidden: int = 128, layers: int = 2, heads: int = 4, seed: int = 0,
               max_positions: int = 1024):
    """A small Llama built from a config (random init) sized to `tokenizer`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    return LlamaForCausalLM(config)


def cap_tasks(examples: list[tuple[str, str, str]], caps: dict[str, int | None], default: int | None,
              seed: int = 0) -> list[tuple[str, str, str]]:
    """Keep at most caps.get(task, default) examples per task (a seeded sample, original order kept);
    a cap of None or 0 keeps all of that task."""
    rng = random.Random(seed)
    by_task: dict[str, list[int]] = {}
    for j, ex in enumerate(examples):
        by_task.setdefault(ex[0], []).append(j)
    keep: set[int] = set()
    for task, rows in by_task.items():
        cap = caps.get(task, default)
        keep.update(rng.sample(rows, cap) if cap and len(rows) > cap else rows)
    return [ex for j, ex in enumerate(examples) if j in keep]


def _parse_caps(text: str | None) -> dict[str, int | None]:
    caps: dict[str, int | None] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        task, _, n = part.partition("=")
        if task.strip() not in TASKS or not n.strip().isdigit():
            raise ValueError(f"task-caps: expected TASK=N with TASK in {list(TASKS)}, got {part!r}")
        caps[task.strip()] = int(n) or None
    return caps


def _load_data(folder: str | Path, index_path: str | Path | None):
    data = load_lcrec(folder)
    if index_path is None:
        raise ValueError("index: pass --index (made by `fastrec lcrec index` or elsewhere)")
    path = Path(index_path)
    index = load_index(path)
    if len(index) != data.num_items:
        raise ValueError(f"index: {path} has {len(index)} items but the data set has {data.num_items}")
    return data, index


def _last_loss(log_history: list[dict]) -> tuple[float | None, float | None]:
    losses = [r["loss"] for r in log_history if "loss" in r]
    if not losses:
        return None, None
    tail = losses[-10:]
    return losses[0], sum(tail) / len(tail)


def train(folder: str | Path, index_path: str | Path, out: str | Path, cfg: engine_lib.TrainConfig | None = None,
          model_path: str | None = None, tasks=TASKS, task_caps: dict[str, int | None] | None = None,
          max_per_task: int | None = 20_000, hidden: int = 128, layers: int = 2, heads: int = 4,
          template: str = "alpaca", max_history: int = 20, max_length: int = 384, vocab_size: int = 4000,
          callbacks: list | None = None) -> dict:
    """Tune a causal LM on the LC-Rec tasks with transformers.Trainer and save the run to `out`.

    The model is `model_path` (a local HF causal LM; with cfg.lora a LoRA adapter is trained and the
    embeddings, which gain the index tokens, are trained and saved in full) or a small Llama built from a
    config (hidden, layers, heads) with a word-level tokenizer of the prompts' `vocab_size` most frequent
    words. Training examples come from
    the users' train sequences (leave-one-out: the last two items are held out). `task_caps` caps examples
    per task ({task: n}, None or 0 = all), `max_per_task` is the cap of the tasks not named there.

    Writes OUT/model (model, tokenizer/, index.json, lcrec.json, manifest.json; atomically), OUT/metrics.jsonl
    and, with cfg.save_every, OUT/checkpoints/checkpoint-N for --resume (cfg.resume). `callbacks` are extra
    TrainerCallbacks. Returns the run summary.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer

    cfg = cfg or engine_lib.TrainConfig(lr=1e-3, batch_size=16, steps=200, warmup_steps=10)
    if cfg.lora and not model_path:
        raise ValueError("lora: LoRA adapts a pretrained model; pass --model PATH (or train the small Llama fully)")
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {list(TEMPLATES)}, got {template!r}")
    t0 = time.perf_counter()
    out = Path(out)
    data, index = _load_data(folder, index_path)
    split = leave_one_out(data)
    levels = len(next(iter(index.values())))
    codebook_size = int(index_to_codes(index).max()) + 1
    train_seqs = [[int(i) for i in s] for s in split.train.sequences()]
    examples = build_tasks(train_seqs, index, data.item_text, tasks=tasks, seed=cfg.seed, max_history=max_history,
                           template=template)
    examples = cap_tasks(examples, task_caps or {}, max_per_task, seed=cfg.seed)
    counts = {t: sum(1 for e in examples if e[0] == t) for t in tasks}
    resume = engine_lib.resolve_resume(cfg.resume, out) if cfg.resume else None
    if resume is not None:  # the checkpoint's tokenizer: a rebuilt WordPiece vocabulary may number tokens anew
        tokenizer = AutoTokenizer.from_pretrained(resume, local_files_only=True)
    elif model_path:
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    else:
        tokenizer = local_tokenizer([p + " " + r for _, p, r in examples], vocab_size)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model_path:
        model = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True)
    else:
        model = tiny_llama(tokenizer, hidden=hidden, layers=layers, heads=heads, seed=cfg.seed,
                           max_positions=max(1024, max_length))
    add_index_tokens(model, tokenizer, {"all": index_tokens(levels, codebook_size)}, mean_init=bool(model_path))
    model = engine_lib.apply_lora(model, cfg, modules_to_save=["embed_tokens", "lm_head"])
    tokenizer.padding_side = "right"
    dataset = LCRecDataset(examples, tokenizer, max_length=max_length)
    run_config = {"data": str(Path(folder).resolve()), "dataset": data.name, "index_source": str(index_path),
                  "model": str(Path(model_path).resolve()) if model_path else None, "lora": cfg.lora,
                  "tiny": None if model_path else {"hidden": hidden, "layers": layers, "heads": heads},
                  "tasks": list(tasks), "task_caps": task_caps or {}, "max_per_task": max_per_task,
                  "examples": counts, "template": template, "max_history": max_history, "max_length": max_length,
                  "levels": levels, "codebook_size": codebook_size, "train": cfg.to_dict()}
    args = engine_lib.training_arguments(cfg, out)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=LCRecCollator(tokenizer),
                      processing_class=tokenizer,
                      callbacks=[engine_lib.JsonlMetrics(out / "metrics.jsonl"),
                                 engine_lib.CheckpointManifest({"index.json": index, RUN_CONFIG: run_config}),
                                 *(callbacks or [])])
    if not cfg.progress:  # without progress bars the Trainer prints every log dict instead; metrics.jsonl has them
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    t1 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    t_train = time.perf_counter() - t1
    first, last = _last_loss(trainer.state.log_history)
    run_config.update(steps=trainer.state.global_step, first_loss=first, last_loss=last, train_seconds=t_train,
                      train_runtime=result.metrics.get("train_runtime"), world_size=args.world_size,
                      resumed_from=str(resume) if resume else None)
    if trainer.is_world_process_zero():
        _save_run(trainer.model, tokenizer, index, run_config, out)
    trainer.accelerator.wait_for_everyone()
    run_config["total_seconds"] = time.perf_counter() - t0
    return run_config


def local_tokenizer(texts: list[str], vocab_size: int = 4000):
    """A word-level tokenizer of the `vocab_size` - 4 most frequent lower-cased words and punctuation of
    `texts` (ties in alphabetical order) plus <unk>, <s>, </s>, <pad>: the same vocabulary on every process
    and every run (the `tokenizers` WordPiece trainer breaks ties differently from run to run)."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = Counter(w for t in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(t)))
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    words = sorted(counts, key=lambda w: (-counts[w], w))[: max(0, vocab_size - len(specials))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = norm, pre, decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", padding_side="left")


def _save_run(model, tokenizer, index: dict, run_config: dict, out: Path) -> Path:
    """OUT/model written as OUT/.tmp-model and renamed once complete (with its manifest)."""
    final, tmp = out / "model", out / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    engine_lib.save_model(getattr(model, "module", model), tmp, tokenizer=tokenizer)
    save_index(index, tmp / "index.json")
    (tmp / RUN_CONFIG).write_text(json.dumps(run_config, indent=2, default=str))
    engine_lib.write_manifest(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def load_run(run: str | Path, device: str = "auto"):
    """(model, tokenizer, index, run_config) exactly as `train` saved them in RUN/model (checked first)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(run) / "model"
    engine_lib.verify_checkpoint(folder)
    config = json.loads((folder / RUN_CONFIG).read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    index = load_index(folder / "index.json")
    if config.get("lora"):
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(config["model"], local_files_only=True)
        base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        model = PeftModel.from_pretrained(base, folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    return model.to(_auto_device(device)).eval(), tokenizer, index, config


# ------------------------------------------------------------------------------------------------------ eval
@torch.no_grad()
def recommend(model, tokenizer, processor: ItemTrieLogitsProcessor, prompts: list[str], beams: int = 20,
              k: int = 10) -> torch.Tensor:
    """Top-k item ids [len(prompts), k] by trie-constrained beam search (-1 pads rows with fewer items)."""
    device = next(model.parameters()).device
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    out = model.generate(**batch, num_beams=beams, num_return_sequences=beams, do_sample=False,
                         max_new_tokens=processor.levels + 1, logits_processor=[processor],
                         output_scores=True, return_dict_in_generate=True, early_stopping=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    items = processor.decode(out.sequences.cpu(), batch["input_ids"].shape[1])
    scores = out.sequences_scores.view(len(prompts), beams).cpu()
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


def _drop_seen(ranked: torch.Tensor, histories: list[list[int]], k: int) -> torch.Tensor:
    """Remove each user's history items from the ranked rows (the rest moves up; -1 pads)."""
    out = torch.full((ranked.shape[0], k), -1, dtype=torch.long)
    for r, (row, hist) in enumerate(zip(ranked.tolist(), histories, strict=True)):
        kept = [i for i in row if i >= 0 and i not in set(hist)][:k]
        out[r, :len(kept)] = torch.tensor(kept, dtype=torch.long)
    return out


def _metrics(topk: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    ids = topk.clamp_min(0) + (topk < 0) * (1 << 40)  # -1 never matches a target
    res = evaluate_topk(ids, targets, ks=(1, 5, 10), metrics=("HR",))
    res.update(evaluate_topk(ids, targets, ks=(5, 10), metrics=("NDCG",)))
    return res


def evaluate(model, tokenizer, index: dict, histories: list[list[int]], targets: torch.Tensor, beams: int = 20,
             batch_size: int = 8, progress: bool = True, template: str = "alpaca", max_history: int = 20,
             k: int = 20, dtype: str = "fp32") -> tuple[dict[str, float], dict[str, float], torch.Tensor]:
    """Top-k by constrained generation for every history; returns (metrics, metrics with each user's
    history removed from the list, top-k ids [users, k]). `dtype` "bf16" generates under bf16 autocast."""
    processor = ItemTrieLogitsProcessor(index, tokenizer)
    tokenizer.padding_side = "left"
    prompts = [seqrec_prompt(index, h, max_history=max_history, template=template) for h in histories]
    # batches of similar length pad little; results go back to the users' order
    order = sorted(range(len(prompts)), key=lambda i: len(tokenizer(prompts[i], add_special_tokens=False)["input_ids"]))
    top = torch.full((len(prompts), max(k, 10)), -1, dtype=torch.long)
    device = next(model.parameters()).device
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
    with amp:
        for s in tqdm(range(0, len(order), batch_size), desc="lc-rec eval", unit="batch", disable=not progress):
            rows = order[s:s + batch_size]
            top[rows] = recommend(model, tokenizer, processor, [prompts[i] for i in rows], beams=beams, k=max(k, 10))
    return _metrics(top[:, :10], targets), _metrics(_drop_seen(top, histories, 10), targets), top[:, :k]


def evaluate_run(run: str | Path, data: str | Path | None = None, eval_users: int | None = None, beams: int = 20,
                 batch_size: int = 8, seed: int = 0, device: str = "auto", progress: bool = True,
                 dtype: str = "fp32") -> dict:
    """Evaluate what `train` saved in RUN on the leave-one-out test users (all, or `eval_users` sampled with
    `seed`); writes RUN/eval/results.json and RUN/eval/top20.jsonl (raw user id, target, top-20 item ids)."""
    t0 = time.perf_counter()
    model, tokenizer, index, config = load_run(run, device)
    folder = Path(data) if data else Path(config["data"])
    dataset = load_lcrec(folder)
    if len(index) != dataset.num_items:
        raise ValueError(f"data: {folder} has {dataset.num_items} items but the run's index has {len(index)}")
    split = leave_one_out(dataset)
    indptr, items = split.history("test")
    users = split.test_users.tolist()
    histories = [items[indptr[u]:indptr[u + 1]].tolist() for u in range(len(users))]
    targets = split.test_targets
    sampled = eval_users is not None and 0 < eval_users < len(histories)
    if sampled:
        pick = torch.randperm(len(histories), generator=torch.Generator().manual_seed(seed))[:eval_users]
        pick = pick.sort().values.tolist()
        users, histories, targets = [users[i] for i in pick], [histories[i] for i in pick], targets[pick]
        print(f"lc-rec eval: {len(pick)} of {split.test_users.numel()} test users sampled (seed {seed})")
    metrics, unseen, top = evaluate(model, tokenizer, index, histories, targets, beams=beams, batch_size=batch_size,
                                    progress=progress, template=config.get("template", "alpaca"),
                                    max_history=config.get("max_history", 20), k=20, dtype=dtype)
    out = Path(run) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "top20.jsonl.tmp", "w", encoding="utf-8") as f:
        for u, t, row in zip(users, targets.tolist(), top.tolist(), strict=True):
            f.write(json.dumps({"user": dataset.user_ids[u], "target": t, "top": [i for i in row if i >= 0]}) + "\n")
    os.replace(out / "top20.jsonl.tmp", out / "top20.jsonl")
    result = {"metrics": metrics, "metrics_history_removed": unseen, "eval_users": len(histories),
              "test_users": int(split.test_users.numel()), "sampled": sampled, "seed": seed, "beams": beams,
              "dtype": dtype,
              "data": str(folder), "eval_seconds": time.perf_counter() - t0}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    return result


def recommend_user(run: str | Path, user: str, k: int = 10, beams: int = 20, data: str | Path | None = None,
                   device: str = "auto") -> list[tuple[int, str]]:
    """Top-k (item id, title) for raw user id `user`, from the user's whole interaction history."""
    model, tokenizer, index, config = load_run(run, device)
    dataset = load_lcrec(Path(data) if data else Path(config["data"]))
    if str(user) not in dataset.user_map:
        raise ValueError(f"user: {user!r} is not in {config['data']}")
    u = dataset.user_map[str(user)]
    history = dataset.items[dataset.indptr[u]:dataset.indptr[u + 1]].tolist()
    tokenizer.padding_side = "left"
    prompt = seqrec_prompt(index, history, max_history=config.get("max_history", 20),
                           template=config.get("template", "alpaca"))
    ranked = recommend(model, tokenizer, ItemTrieLogitsProcessor(index, tokenizer), [prompt], beams=max(beams, k),
                       k=k)[0].tolist()
    return [(i, str((dataset.item_text.get(i) or {}).get("title", "")) or f"item {i}") for i in ranked if i >= 0]


# ------------------------------------------------------------------------------------------------------- CLI
def add_parser(sub) -> None:
    p = sub.add_parser("lcrec", help="LC-Rec: index items, tune an LLM on the alignment tasks, evaluate, recommend")
    stages = p.add_subparsers(dest="stage", required=True)
    ix = stages.add_parser("index", help="text embeddings -> RQ-VAE -> collision-free <name>.index.json")
    ix.add_argument("--data", required=True, help="LC-Rec data folder (<name>.inter.json, <name>.item.json)")
    ix.add_argument("--out", default="results/lcrec", help="output folder")
    ix.add_argument("--encoder", default=None, help="local HF encoder or causal LM folder (default: all-MiniLM-L6-v2)")
    ix.add_argument("--levels", type=int, default=4)
    ix.add_argument("--codes", type=int, default=256, help="codes per level")
    ix.add_argument("--rqvae-epochs", "--epochs", dest="rqvae_epochs", type=int, default=200)
    ix.add_argument("--rqvae-batch", type=int, default=1024)
    ix.add_argument("--rqvae-lr", type=float, default=1e-3)
    ix.add_argument("--device", choices=engine_lib.DEVICES, default="auto")
    ix.add_argument("--seed", type=int, default=0)
    ix.set_defaults(func=_cmd_index)

    tr = stages.add_parser("train", help="tune a causal LM on the LC-Rec tasks (transformers.Trainer), save to --out")
    tr.add_argument("--data", required=True, help="LC-Rec data folder")
    tr.add_argument("--index", required=True, help="index JSON {item: [<a_1>, ...]}")
    tr.add_argument("--out", required=True, help="run folder")
    tr.add_argument("--model", default=None, help="local HF causal LM folder (default: a small Llama from a config)")
    tr.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks (the mixture)")
    tr.add_argument("--task-caps", default="", help="per-task caps TASK=N,... (0 = all of that task)")
    tr.add_argument("--max-per-task", type=int, default=20_000, help="cap of the tasks not in --task-caps (0 = all)")
    tr.add_argument("--template", choices=list(TEMPLATES), default="alpaca",
                    help="alpaca: LC-Rec's prompts; short: the instruction alone; compact: task name and fields only "
                         "(cheapest, for small models trained from scratch)")
    tr.add_argument("--max-history", type=int, default=20)
    tr.add_argument("--max-length", type=int, default=384)
    tr.add_argument("--hidden", type=int, default=128, help="small Llama width (without --model)")
    tr.add_argument("--layers", type=int, default=2, help="small Llama layers (without --model)")
    tr.add_argument("--heads", type=int, default=4, help="small Llama attention heads (without --model)")
    tr.add_argument("--vocab-size", type=int, default=4000, help="word vocabulary (without --model)")
    engine_lib.add_training_args(tr, llm=True, lr=1e-3, batch_size=16, steps=200, warmup_steps=10)
    tr.set_defaults(func=_cmd_train)

    ev = stages.add_parser("eval", help="evaluate a trained run on the test users (all by default)")
    ev.add_argument("--run", required=True, help="run folder written by `fastrec lcrec train`")
    ev.add_argument("--data", default=None, help="data folder (default: the one the run was trained on)")
    ev.add_argument("--eval-users", type=int, default=None, help="sample this many test users (seeded); default all")
    ev.add_argument("--beams", type=int, default=20)
    ev.add_argument("--batch-size", type=int, default=8, help="prompts per generate() call")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--device", choices=engine_lib.DEVICES, default="auto")
    ev.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: generate under bf16 autocast")
    ev.add_argument("--no-progress", dest="progress", action="store_false")
    ev.set_defaults(func=_cmd_eval)

    rc = stages.add_parser("recommend", help="print a user's top-k items with titles")
    rc.add_argument("--run", required=True)
    rc.add_argument("--user", required=True, help="raw user id as in <name>.inter.json")
    rc.add_argument("--k", type=int, default=10)
    rc.add_argument("--beams", type=int, default=20)
    rc.add_argument("--data", default=None)
    rc.add_argument("--device", choices=engine_lib.DEVICES, default="auto")
    rc.set_defaults(func=_cmd_recommend)


def _cmd_index(args: argparse.Namespace) -> int:
    stats = index_items(args.data, args.out, epochs=args.rqvae_epochs, levels=args.levels, codebook_size=args.codes,
                        encoder=args.encoder, batch_size=args.rqvae_batch, lr=args.rqvae_lr, device=args.device,
                        seed=args.seed)
    print(json.dumps(stats, indent=2))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = engine_lib.config_from_args(args)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    res = train(args.data, args.index, args.out, cfg, model_path=args.model, tasks=tasks,
                task_caps=_parse_caps(args.task_caps), max_per_task=args.max_per_task or None, hidden=args.hidden,
                layers=args.layers, heads=args.heads, template=args.template, max_history=args.max_history,
                max_length=args.max_length, vocab_size=args.vocab_size)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(res, indent=2, default=str))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    res = evaluate_run(args.run, data=args.data, eval_users=args.eval_users, beams=args.beams,
                       batch_size=args.batch_size, seed=args.seed, device=args.device, progress=args.progress,
                       dtype=args.dtype)
    print(json.dumps(res, indent=2))
    return 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    rows = recommend_user(args.run, args.user, k=args.k, beams=args.beams, data=args.data, device=args.device)
    print(f"top {args.k} for user {args.user}:")
    for rank, (item, title) in enumerate(rows, 1):
        print(f"{rank:>3}. item {item}: {title}")
    return 0


def demo(out: str | Path, progress: bool = False) -> dict:
    """The LC-Rec part of `make demo` on the embedded synthetic data set, well under a minute."""
    from fastrec.data import synthetic

    t0 = time.perf_counter()
    out = Path(out) / "lcrec"
    folder = synthetic(out / "data", num_users=200, num_items=120)
    stats = index_items(folder, out, epochs=20, hidden=(256, 128, 64), levels=3, codebook_size=16,
                        progress=progress)
    cfg = engine_lib.TrainConfig(lr=1e-3, batch_size=16, steps=25, warmup_steps=5, progress=progress)
    train(folder, out / "Synthetic.index.json", out / "run", cfg, hidden=64)
    res = evaluate_run(out / "run", eval_users=32, beams=10, progress=progress)
    summary = {"collision_rate": stats["collision_rate"], "index_seconds": stats["total_seconds"],
               **res["metrics"], "seconds": time.perf_counter() - t0}
    print("lc-rec demo:", json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
    return summary
