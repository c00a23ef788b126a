"""SeLLa-Rec end to end: collaborative model, semantic alignment, LoRA tuning, AUC / UAUC on warm and cold items.

    fastrec sellarec train --data synthetic --out results/sellarec        # tiny LLM from a config, CPU
    fastrec sellarec train --data ../shared/data/amazon-scientific --model /path/to/llama --out ...
    fastrec sellarec eval --out results/sellarec

1. Collaborative model: MF (d = 256) trained with BCE on (user, item, label) CTR examples.
2. Semantic alignment: each item's text embedding is the LLM's last hidden state of the final token of
   "Item: {title}" (kept as floats); MF item vectors pass through the item projection and are pulled to it
   with InfoNCE (tau = 0.2), plus BCE on the projected user . item score.
3. LoRA tuning (peft) on the Yes/No prompt with up to 10 history titles and <User_ID>, <Item_ID>, <Warm_ID>
   spliced by fastrec's fused op; loss on the answer tokens only; score = softmax over the "Yes"/"No" logits.

Stage 1 is fastrec.nn.MF trained with BCE on (user, item, label).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fastrec.data import Interactions, leave_one_out, sample_negatives, seen_csr
from fastrec.eval import auc, uauc
from fastrec.integrations.hf import attach_collab_tokens, collab_embedding, word_tokenizer
from fastrec.nn import MF, HybridProjection

TOKENS = ("<User_ID>", "<Item_ID>", "<Warm_ID>")
PROMPT = ("The user has liked : {history} . The user's feature is <User_ID> . The target item is {title} , "
          "its feature is <Item_ID> , <Warm_ID> . Will the user like the target item ? Answer :")


@dataclass
class SellaRecConfig:
    """Every knob of the recipe (defaults: the paper's sizes where they fit a CPU run)."""

    data: str = "synthetic"
    model: str | None = None  # local checkpoint folder; None: a tiny Llama built from a config
    out: str = "results/sellarec"
    mf_dim: int = 256
    mf_epochs: int = 20
    mf_lr: float = 3e-3
    proj_mid: int = 1024
    align_epochs: int = 10
    align_lr: float = 1e-3
    tau: float = 0.2
    lora_epochs: int = 2
    lora_r: int = 8
    lora_lr: float = 2e-3
    max_history: int = 10
    num_neg: int = 1
    eval_neg: int = 4
    train_pos_per_user: int = 2  # latest training positives per user used for LoRA tuning
    max_users: int | None = None  # users in the LLM train / eval sets (MF always trains on all)
    cold_threshold: int = 5  # items with fewer training interactions are cold
    batch_size: int = 32
    tiny_hidden: int = 64
    tiny_layers: int = 2
    seed: int = 0
    device: str = "cpu"
    history: dict[str, list[float]] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- data


@dataclass
class CTRSet:
    """CTR examples: user, item, label and the ids of up to `max_history` earlier positives per example."""

    users: torch.Tensor
    items: torch.Tensor
    labels: torch.Tensor
    history: list[list[int]]

    def __len__(self) -> int:
        return self.users.numel()


def load_data(spec: str, seed: int = 0) -> Interactions:
    """'synthetic', an LC-Rec folder (*.inter.json, *.item.json) or a MovieLens-1M folder (ratings.dat)."""
    from fastrec.data import load_lcrec, load_movielens, synthetic

    if spec == "synthetic":
        return synthetic(seed=seed)
    path = Path(spec)
    if (path / "ratings.dat").is_file():
        return load_movielens(path)
    return load_lcrec(path)


def _title(data: Interactions, item: int) -> str:
    text = data.item_text.get(item, {}) if data.item_text else {}
    return (text.get("title") or f"item {data.item_ids[item]}").strip()


def build_ctr(data: Interactions, cfg: SellaRecConfig) -> tuple[CTRSet, CTRSet, CTRSet, CTRSet, torch.Tensor]:
    """(mf_train, train, valid, test, train item counts).

    Implicit data: leave-one-out; every training positive (+ `num_neg` sampled negatives) trains MF, the
    latest `train_pos_per_user` of each user (with their histories) tune the LLM; valid / test targets come
    with `eval_neg` sampled negatives. Rated data (MovieLens): every rating is an example, rating >= 4 is
    Yes, chronological per user (last = test, second last = valid).
    """
    g = torch.Generator().manual_seed(cfg.seed)
    if data.ratings is not None:
        return _ctr_from_ratings(data, cfg)
    split = leave_one_out(data)
    seqs = split.train.sequences()
    users = range(len(seqs)) if cfg.max_users is None else range(min(cfg.max_users, len(seqs)))
    seen = seen_csr(*data.pairs(), data.num_users, data.num_items)
    sets = []
    # train: the latest `train_pos_per_user` training positives of each user, history = what came before
    pos_u, pos_i, hist = [], [], []
    for u in users:
        s = seqs[u]
        for k in range(max(1, len(s) - cfg.train_pos_per_user), len(s)):
            pos_u.append(u)
            pos_i.append(s[k])
            hist.append(s[max(0, k - cfg.max_history):k])
    sets.append(_with_negatives(pos_u, pos_i, hist, seen, data.num_items, cfg.num_neg, g))
    for stage in ("valid", "test"):
        indptr, items = split.history(stage)
        eval_users = split.valid_users if stage == "valid" else split.test_users
        targets = split.valid_targets if stage == "valid" else split.test_targets
        keep = [j for j, u in enumerate(eval_users.tolist()) if u in users]
        h = [items[indptr[j]:indptr[j + 1]].tolist()[-cfg.max_history:] for j in keep]
        sets.append(_with_negatives(eval_users[keep].tolist(), targets[keep].tolist(), h, seen, data.num_items,
                                    cfg.eval_neg, g))
    train_u, train_i = split.train.pairs()  # MF sees every user (cheap); max_users limits the LLM sets
    mf_train = _with_negatives(train_u.tolist(), train_i.tolist(), [[] for _ in range(train_u.numel())],
                               seen, data.num_items, cfg.num_neg, g)
    counts = torch.bincount(split.train.items, minlength=data.num_items)
    return mf_train, sets[0], sets[1], sets[2], counts


def _with_negatives(users: list[int], items: list[int], hist: list[list[int]], seen, num_items: int,
                    num_neg: int, g: torch.Generator) -> CTRSet:
    u = torch.tensor(users, dtype=torch.int64)
    neg = sample_negatives(u, seen[0], seen[1], num_items, num_neg, generator=g)  # [n, num_neg]
    all_u = torch.cat([u, u.repeat_interleave(num_neg)])
    all_i = torch.cat([torch.tensor(items, dtype=torch.int64), neg.reshape(-1)])
    labels = torch.cat([torch.ones(len(users)), torch.zeros(len(users) * num_neg)])
    history = hist + [h for h in hist for _ in range(num_neg)]
    return CTRSet(all_u, all_i, labels, history)


def _ctr_from_ratings(data: Interactions, cfg: SellaRecConfig
                      ) -> tuple[CTRSet, CTRSet, CTRSet, CTRSet, torch.Tensor]:
    out: list[tuple[list, list, list, list]] = [([], [], [], []) for _ in range(4)]  # train, valid, test, mf
    n_users = data.num_users if cfg.max_users is None else min(cfg.max_users, data.num_users)
    for u in range(n_users):
        lo, hi = int(data.indptr[u]), int(data.indptr[u + 1])
        items, ratings = data.items[lo:hi].tolist(), data.ratings[lo:hi].tolist()
        liked: list[int] = []
        for k, (i, r) in enumerate(zip(items, ratings, strict=True)):
            stage = 2 if k == len(items) - 1 else 1 if k == len(items) - 2 else 0
            if stage == 0:
                out[3][0].append(u)
                out[3][1].append(i)
                out[3][2].append(float(r >= 4))
                out[3][3].append([])
            if stage > 0 or k >= len(items) - 2 - cfg.train_pos_per_user * 3:
                bucket = out[stage]
                bucket[0].append(u)
                bucket[1].append(i)
                bucket[2].append(float(r >= 4))
                bucket[3].append(liked[-cfg.max_history:])
            if r >= 4:
                liked.append(i)
    sets = [CTRSet(torch.tensor(a, dtype=torch.int64), torch.tensor(b, dtype=torch.int64), torch.tensor(c), d)
            for a, b, c, d in out]
    counts = torch.bincount(sets[3].items, minlength=data.num_items)
    return sets[3], sets[0], sets[1], sets[2], counts


# ------------------------------------------------------------------------------ stage 1: collaborative


def _make_mf(num_users: int, num_items: int, dim: int) -> MF:
    return MF(num_users, num_items, dim)


def _batches(n: int, size: int, g: torch.Generator | None):
    order = torch.randperm(n, generator=g) if g is not None else torch.arange(n)
    for start in range(0, n, size):
        yield order[start:start + size]


def train_mf(train: CTRSet, num_users: int, num_items: int, cfg: SellaRecConfig) -> nn.Module:
    """Stage 1: BCE on (user, item, label); returns the MF model (its tables feed <User_ID> / <Item_ID>)."""
    g = torch.Generator().manual_seed(cfg.seed)
    mf = _make_mf(num_users, num_items, cfg.mf_dim)
    opt = torch.optim.Adam(mf.parameters(), lr=cfg.mf_lr, weight_decay=1e-6)
    losses = []
    for _ in tqdm(range(cfg.mf_epochs), desc="sellarec 1/3 MF", unit="epoch"):
        total = 0.0
        for idx in _batches(len(train), 1024, g):
            loss = F.binary_cross_entropy_with_logits(mf.score(train.users[idx], train.items[idx]), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
        losses.append(total / len(train))
    cfg.history["mf_loss"] = losses
    return mf.eval()


# ------------------------------------------------------------------------------- stage 2: alignment


def item_text_embeddings(llm: nn.Module, tok: Any, data: Interactions) -> torch.Tensor:
    """Last hidden state of the final token of "Item: {title}" for every item, float32 [I, H]."""
    from fastrec.data.text import text_embeddings

    texts = [f"Item: {_title(data, i)}" for i in range(data.num_items)]
    with torch.no_grad():
        return text_embeddings(texts, model=llm, tokenizer=tok, pooling="last", batch_size=64, progress=False)


def align(proj: HybridProjection, mf: nn.Module, text: torch.Tensor, train: CTRSet,
          cfg: SellaRecConfig) -> None:
    """Stage 2: InfoNCE(item_proj(q_i), text_i; tau) over in-batch items + BCE on <user_proj(p_u), item_proj(q_i)>."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    params = list(proj.user.parameters()) + list(proj.item.parameters())
    opt = torch.optim.Adam(params, lr=cfg.align_lr)
    users_w, items_w = (t.detach() for t in mf())
    target = F.normalize(text.to(items_w.dtype), dim=-1)
    scale = 1.0 / math.sqrt(proj.hidden_size)
    losses = []
    for _ in tqdm(range(cfg.align_epochs), desc="sellarec 2/3 align", unit="epoch"):
        total = 0.0
        for idx in _batches(len(train), 256, g):
            u, i, y = train.users[idx], train.items[idx], train.labels[idx]
            pi = proj("item", items_w[i])
            items_b = i.unique()
            z = F.normalize(proj("item", items_w[items_b]), dim=-1)
            nce = F.cross_entropy(z @ target[items_b].T / cfg.tau, torch.arange(items_b.numel()))
            logit = (proj("user", users_w[u]) * pi).sum(-1) * scale
            loss = nce + F.binary_cross_entropy_with_logits(logit, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
        losses.append(total / len(train))
    cfg.history["align_loss"] = losses


# ------------------------------------------------------------------------------------ stage 3: LoRA


def answer_token_ids(tok: Any) -> tuple[int, int]:
    """Ids of the "Yes" and "No" answer tokens, found from the tokenizer (first token of " Yes" / " No")."""
    ids = []
    for word in ("Yes", "No"):
        for text in (" " + word, word):
            enc = tok.encode(text, add_special_tokens=False)
            if enc and enc[0] != tok.unk_token_id:
                ids.append(enc[0])
                break
        else:
            raise ValueError(f"the tokenizer cannot encode the answer {word!r}")
    if ids[0] == ids[1]:
        raise ValueError("'Yes' and 'No' map to the same first token")
    return ids[0], ids[1]


def _prompts(data: Interactions, ctr: CTRSet, rows: torch.Tensor) -> list[str]:
    out = []
    for r in rows.tolist():
        hist = " , ".join(_title(data, i) for i in ctr.history[r]) or "nothing yet"
        out.append(PROMPT.format(history=hist, title=_title(data, int(ctr.items[r]))))
    return out


def _encode(tok: Any, prompts: list[str], answers: list[str] | None, device: str) -> dict[str, torch.Tensor]:
    """Right-padded batch; `labels` hold only the answer tokens; `last` is the final prompt position."""
    p_ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
    a_ids = [tok.encode(" " + a, add_special_tokens=False)[:1] for a in answers] if answers else [[] for _ in prompts]
    seqs = [p + a for p, a in zip(p_ids, a_ids, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for r, (p, a) in enumerate(zip(p_ids, a_ids, strict=True)):
        ids[r, :len(p) + len(a)] = torch.tensor(p + a)
        mask[r, :len(p) + len(a)] = 1
        labels[r, len(p):len(p) + len(a)] = torch.tensor(a, dtype=torch.int64)
    last = torch.tensor([len(p) - 1 for p in p_ids])
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device),
            "last": last.to(device)}


def _collab(ctr: CTRSet, rows: torch.Tensor, device: str) -> dict[str, torch.Tensor]:
    items = ctr.items[rows].to(device)
    return {"user": ctr.users[rows].to(device), "item": items, "warm": items}


def lora_tune(model: nn.Module, tok: Any, data: Interactions, train: CTRSet, cfg: SellaRecConfig) -> None:
    """Stage 3: causal-LM loss on the answer token only; LoRA adapters and the projections train."""
    g = torch.Generator().manual_seed(cfg.seed + 2)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lora_lr)
    model.train()
    losses = []
    steps = cfg.lora_epochs * math.ceil(len(train) / cfg.batch_size)
    with tqdm(total=steps, desc="sellarec 3/3 LoRA", unit="step") as bar:
        for _ in range(cfg.lora_epochs):
            total = 0.0
            for idx in _batches(len(train), cfg.batch_size, g):
                answers = ["Yes" if y > 0.5 else "No" for y in train.labels[idx].tolist()]
                batch = _encode(tok, _prompts(data, train, idx), answers, cfg.device)
                batch.pop("last")
                loss = model(**batch, collab=_collab(train, idx, cfg.device)).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * idx.numel()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            losses.append(total / len(train))
    cfg.history["lora_loss"] = losses
    model.eval()


@torch.no_grad()
def score(model: nn.Module, tok: Any, data: Interactions, ctr: CTRSet, cfg: SellaRecConfig) -> torch.Tensor:
    """P(Yes) = softmax over the "Yes"/"No" logits at the answer position, one per example."""
    yes, no = answer_token_ids(tok)
    out = torch.empty(len(ctr))
    model.eval()
    for idx in tqdm(list(_batches(len(ctr), cfg.batch_size * 2, None)), desc="sellarec score", unit="batch",
                    leave=False):
        batch = _encode(tok, _prompts(data, ctr, idx), None, cfg.device)
        last = batch.pop("last")
        batch.pop("labels")
        logits = model(**batch, collab=_collab(ctr, idx, cfg.device)).logits
        pair = logits[torch.arange(idx.numel()), last][:, [yes, no]].float()
        out[idx] = pair.softmax(-1)[:, 0].cpu()
    return out


def metrics(scores: torch.Tensor, ctr: CTRSet, warm: torch.Tensor) -> dict[str, float]:
    """AUC and UAUC over all examples and separately over warm and cold target items."""
    res: dict[str, float] = {}
    is_warm = warm[ctr.items]
    for name, keep in (("all", torch.ones_like(is_warm)), ("warm", is_warm), ("cold", ~is_warm)):
        y, s, u = ctr.labels[keep], scores[keep], ctr.users[keep]
        ok = bool((y > 0.5).any() and (y < 0.5).any())
        res[f"auc_{name}"] = float(auc(s, y)) if ok else float("nan")
        res[f"uauc_{name}"] = float(uauc(s, y, u)) if ok else float("nan")
        res[f"n_{name}"] = int(keep.sum())
    return res


# --------------------------------------------------------------------------------------- pipeline


def _tiny_llm(vocab: int, cfg: SellaRecConfig) -> nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(cfg.seed)
    conf = LlamaConfig(vocab_size=vocab, hidden_size=cfg.tiny_hidden, intermediate_size=cfg.tiny_hidden * 2,
                       num_hidden_layers=cfg.tiny_layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=1024)
    return AutoModelForCausalLM.from_config(conf, attn_implementation="sdpa")


def _llm(data: Interactions, cfg: SellaRecConfig, out: Path | None) -> tuple[nn.Module, Any]:
    """(model, tokenizer): a local checkpoint (`--model`, local files only) or a tiny Llama with the project's
    own word tokenizer over the prompt and every title."""
    if cfg.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(cfg.model, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(cfg.model, local_files_only=True, torch_dtype=torch.float32)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return model.to(cfg.device), tok
    if out is not None and (out / "tokenizer").is_dir():
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(out / "tokenizer")
    else:
        words = [PROMPT, "Item: Yes No nothing yet"] + [_title(data, i) for i in range(data.num_items)]
        tok = word_tokenizer(words)
    return _tiny_llm(len(tok), cfg).to(cfg.device), tok


def _attach(model: nn.Module, tok: Any, mf_user: torch.Tensor, mf_item: torch.Tensor, text: torch.Tensor,
            cfg: SellaRecConfig) -> HybridProjection:
    h = model.get_input_embeddings().weight.shape[1]
    proj = HybridProjection(h, cfg.mf_dim, cfg.mf_dim, text.shape[1], mid=cfg.proj_mid).to(cfg.device)
    attach_collab_tokens(model, tok, TOKENS, projection=proj)
    collab_embedding(model).set_tables(user=mf_user.to(cfg.device), item=mf_item.to(cfg.device),
                                       warm=text.to(cfg.device))
    return proj


def _peft(model: nn.Module, cfg: SellaRecConfig) -> nn.Module:
    import peft

    lora = peft.get_peft_model(model, peft.LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.0,
                                                      task_type="CAUSAL_LM"))
    for p in collab_embedding(lora).projection.parameters():  # the projections keep training in stage 3
        p.requires_grad_(True)
    return lora


def train(cfg: SellaRecConfig) -> dict[str, Any]:
    """All three stages, then AUC / UAUC on the test split; everything is saved under cfg.out."""
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    data = load_data(cfg.data, cfg.seed)
    mf_tr, tr, _, te, counts = build_ctr(data, cfg)
    mf = train_mf(mf_tr, data.num_users, data.num_items, cfg)
    warm = counts >= cfg.cold_threshold
    results = {"mf": metrics(torch.sigmoid(mf.score(te.users, te.items)).detach(), te, warm)}
    llm, tok = _llm(data, cfg, None)
    text = item_text_embeddings(llm, tok, data)
    users_w, items_w = (t.detach() for t in mf())
    proj = _attach(llm, tok, users_w, items_w, text, cfg)
    align(proj, mf, text, mf_tr, cfg)
    lora = _peft(llm, cfg)
    lora_tune(lora, tok, data, tr, cfg)
    results["sellarec"] = metrics(score(lora, tok, data, te, cfg), te, warm)
    _save(out, cfg, lora, tok, mf, text, counts, results)
    return results


def _atomic_dir(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))


def _save(out: Path, cfg: SellaRecConfig, lora: nn.Module, tok: Any, mf: nn.Module, text: torch.Tensor,
          counts: torch.Tensor, results: dict) -> None:
    """Write to a temporary folder, then swap it in: an interrupted run never leaves a half-written result."""
    from peft import get_peft_model_state_dict

    tmp = _atomic_dir(out)
    emb = collab_embedding(lora)
    users_w, items_w = (t.detach().cpu() for t in mf())
    state = {"mf_user": users_w, "mf_item": items_w,
             "text": text.cpu(), "counts": counts, "projection": emb.projection.state_dict(),
             "lora": get_peft_model_state_dict(lora)}
    if not cfg.model:  # the tiny base model is random: keep every weight of the tuned model
        state["full"] = lora.state_dict()
    torch.save(state, tmp / "sellarec.pt")
    tok.save_pretrained(tmp / "tokenizer")
    (tmp / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    (tmp / "results.json").write_text(json.dumps(results, indent=2))
    _plot(cfg, results, tmp / "sellarec.png")
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _plot(cfg: SellaRecConfig, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, values in cfg.history.items():
        axes[0].plot(range(1, len(values) + 1), values, marker="o", label=name)
    axes[0].set(xlabel="epoch", ylabel="loss", title="training")
    axes[0].legend()
    groups = ["all", "warm", "cold"]
    for k, (model, res) in enumerate(results.items()):
        axes[1].bar([x + 0.4 * k for x in range(3)], [res[f"auc_{gname}"] for gname in groups], 0.4, label=model)
    axes[1].set_xticks([x + 0.2 for x in range(3)], groups)
    axes[1].axhline(0.5, color="grey", lw=0.8)
    axes[1].set(ylabel="test AUC", ylim=(0.3, 1.0), title="AUC by target item")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(out: str | Path, data: str | None = None) -> dict[str, Any]:
    """Reload a trained run from `out` and recompute its test AUC / UAUC (all, warm, cold)."""
    out = Path(out)
    if not (out / "sellarec.pt").is_file():
        raise ValueError(f"out: {out} holds no trained SeLLa-Rec run (sellarec.pt missing)")
    fields = json.loads((out / "config.json").read_text())
    cfg = SellaRecConfig(**fields)
    if data is not None:
        cfg.data = data
    state = torch.load(out / "sellarec.pt", map_location="cpu", weights_only=True)
    dataset = load_data(cfg.data, cfg.seed)
    _, _, _, te, _ = build_ctr(dataset, cfg)
    llm, tok = _llm(dataset, cfg, out)
    proj = _attach(llm, tok, state["mf_user"], state["mf_item"], state["text"], cfg)
    from peft import set_peft_model_state_dict

    lora = _peft(llm, cfg)
    if "full" in state:
        lora.load_state_dict(state["full"])
    else:
        proj.load_state_dict(state["projection"])
        set_peft_model_state_dict(lora, state["lora"])
    warm = state["counts"] >= cfg.cold_threshold
    return {"sellarec": metrics(score(lora, tok, dataset, te, cfg), te, warm)}


# -------------------------------------------------------------------------------------------- CLI


def format_results(results: dict[str, dict[str, float]]) -> str:
    lines = [f"{'model':10s} {'AUC':>7s} {'UAUC':>7s} {'AUC warm':>9s} {'UAUC warm':>10s} {'AUC cold':>9s} "
             f"{'UAUC cold':>10s}  n (warm/cold)"]
    for name, r in results.items():
        lines.append(f"{name:10s} {r['auc_all']:7.4f} {r['uauc_all']:7.4f} {r['auc_warm']:9.4f} "
                     f"{r['uauc_warm']:10.4f} {r['auc_cold']:9.4f} {r['uauc_cold']:10.4f}  "
                     f"{r['n_all']} ({r['n_warm']}/{r['n_cold']})")
    return "\n".join(lines)


def demo_config(out: str) -> SellaRecConfig:
    """A configuration that runs in a few seconds on the embedded synthetic data set."""
    return SellaRecConfig(out=out, mf_dim=32, mf_epochs=15, mf_lr=1e-2, proj_mid=64, align_epochs=2,
                          lora_epochs=1, max_users=200, eval_neg=3, train_pos_per_user=2, tiny_hidden=32,
                          batch_size=32)


def demo(out: str) -> dict[str, Any]:
    """The `fastrec demo` step: the whole recipe on the embedded synthetic data set (seconds on a CPU)."""
    results = train(demo_config(out))
    print("SeLLa-Rec demo (synthetic data, tiny Llama from a config), test split:")
    print(format_results(results))
    return results


def _cli(args: argparse.Namespace) -> int:
    if args.action == "eval":
        print(format_results(evaluate(args.out, args.data)))
        return 0
    cfg = SellaRecConfig(data=args.data or "synthetic", model=args.model, out=args.out, mf_dim=args.mf_dim,
                         mf_epochs=args.mf_epochs, align_epochs=args.align_epochs, lora_epochs=args.lora_epochs,
                         max_users=args.max_users, device=args.device, seed=args.seed)
    if args.demo:
        cfg = demo_config(args.out)
    results = train(cfg)
    print(format_results(results))
    print(f"wrote {cfg.out}/ (results.json, sellarec.png, sellarec.pt, tokenizer/)")
    return 0


def add_parser(sub: Any) -> None:
    """`fastrec sellarec train|eval`."""
    p = sub.add_parser("sellarec", help="SeLLa-Rec: MF, semantic alignment, LoRA tuning; AUC/UAUC warm and cold")
    p.add_argument("action", choices=["train", "eval"])
    p.add_argument("--data", default=None, help="'synthetic' (default), an LC-Rec folder or a MovieLens-1M folder")
    p.add_argument("--model", default=None, help="local HF checkpoint folder (default: a tiny Llama from a config)")
    p.add_argument("--out", default="results/sellarec")
    p.add_argument("--mf-dim", type=int, default=256)
    p.add_argument("--mf-epochs", type=int, default=20)
    p.add_argument("--align-epochs", type=int, default=10)
    p.add_argument("--lora-epochs", type=int, default=2)
    p.add_argument("--max-users", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--demo", action="store_true", help="the small, fast demo configuration")
    p.set_defaults(func=_cli)
