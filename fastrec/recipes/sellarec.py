"""SeLLa-Rec end to end, as its authors built it: TALLRec tuning, MF aligned jointly, LoRA with collab tokens.

    fastrec sellarec train --data synthetic --out results/sellarec        # tiny LLM from a config, CPU
    fastrec sellarec train --data ../shared/data/amazon-scientific --model /path/to/llama --device cuda
    fastrec sellarec eval --out results/sellarec

Defaults follow the original code (wzhwzhwzh0921/SeLLa); fastrec's earlier choices stay as options:

1. TALLRec step (``--tallrec``, default on): LoRA tunes the LLM on the Yes/No prompt without collaborative
   tokens. It is also the "LLM alone" baseline. Each item's vector is the tuned LLM's last hidden state at
   the final token of "Item: {title}" (``--no-tallrec``: from the untuned LLM, fastrec's earlier recipe).
2. Collaborative model (``--align joint``, default): MF (d = 256, no bias) trained with BCE **jointly**
   with a robust InfoNCE between a trainable LLM item table (initialised from step 1's vectors) and the MF
   item vector through Linear(256 -> 1024) -> GELU -> Linear(1024 -> H); Adam lr 1e-2, weight decay 1e-6,
   batch 10,240, early stopping on validation AUC (patience 50). ``--align frozen`` is fastrec's earlier
   recipe: MF alone (same early stopping), then the projections aligned with MF frozen. ``--align-loss
   infonce`` replaces the robust loss by plain InfoNCE.
3. LoRA (r 64, alpha 16, dropout 0.05 on q, k, v, o, gate, up, down) on the prompt with <User_ID>, <Item_ID>
   and <Warm_ID> spliced by fastrec's fused op; the projections keep training; loss on the answer token
   only; transformers.Trainer (lr 2e-4, weight decay 0.01, Adam beta2 0.95, cosine, 1 epoch, gradient
   checkpointing, max length 768), so the same command runs on several GPUs under accelerate/torchrun.

Score = softmax over the "Yes"/"No" logits at the answer position; AUC and UAUC overall, on warm and on
cold target items.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, fields
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
PLAIN_PROMPT = ("The user has liked : {history} . The target item is {title} . Will the user like the target "
                "item ? Answer :")
ITEM_PROMPT = "Item: {title}"
LLAMA_LINEAR = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@dataclass
class SellaRecConfig:
    """Every knob of the recipe. Defaults are the original code's; comments name fastrec's alternatives."""

    data: str = "synthetic"
    prompt: str = PROMPT  # {history}, {title} and the three collab tokens
    plain_prompt: str = PLAIN_PROMPT  # the TALLRec step's prompt: no collab tokens
    model: str | None = None  # local checkpoint folder; None: a tiny Llama built from a config
    out: str = "results/sellarec"
    # step 1: TALLRec-style tuning of the LLM on Yes/No (original); False: item vectors from the untuned LLM
    tallrec: bool = True
    tallrec_epochs: float = 1.0
    tallrec_lr: float = 8e-5
    # step 2: MF + alignment
    mf_dim: int = 256
    mf_lr: float = 1e-2
    mf_wd: float = 1e-6
    mf_batch: int = 10240
    mf_epochs: int = 1000  # at most; early stopping on validation AUC ends it
    mf_patience: int = 50
    align: str = "joint"  # "joint" (original) | "frozen" (fastrec's earlier: MF first, then the projections)
    align_loss: str = "robust"  # "robust" InfoNCE (original) | "infonce"
    tau: float = 0.2
    robust_q: float = 0.01
    robust_lambda: float = 0.1
    align_epochs: int = 10  # "frozen" only
    align_lr: float = 1e-3  # "frozen" only
    proj_mid: int = 1024
    # step 3: LoRA with the collab tokens
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: str = LLAMA_LINEAR  # comma-separated module names, or "all-linear"
    lora_epochs: float = 1.0  # --epochs
    lora_lr: float = 2e-4  # --lr
    lora_steps: int | None = None  # --steps: optimizer steps instead of epochs
    weight_decay: float = 0.01
    adam_beta2: float = 0.95
    lr_scheduler: str = "cosine"
    warmup_steps: int = 0  # the original: none in step 3
    max_grad_norm: float | None = 1.0  # transformers.Trainer's default, as in the original
    gradient_checkpointing: bool = True
    max_length: int = 768
    batch_size: int = 8
    grad_accum: int = 1
    eval_batch_size: int = 32
    dtype: str = "fp32"  # bf16 for a real LLM on a GPU (the original trains in bf16): weights load in it
    save_every: int = 0  # step 3 checkpoints every N optimizer steps (OUT/step3/checkpoints) for --resume
    resume: str | None = None  # "latest" or a checkpoint folder: step 3 resumes (steps 1-2 rerun, seeded)
    progress: bool = True
    # data
    max_history: int = 10
    num_neg: int = 1
    eval_neg: int = 4
    train_pos_per_user: int = 2  # latest training positives per user used for LLM tuning
    max_users: int | None = None  # a seeded sample of users for the LLM train / eval sets (MF sees all)
    rated_eval_per_user: int = 5  # rated data: the last k ratings of each user are test, the k before valid
    cold_threshold: int = 5  # items with fewer training interactions are cold
    tiny_hidden: int = 64
    tiny_layers: int = 2
    seed: int = 0
    device: str = "cpu"
    history: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        choices = {"align": ("joint", "frozen"), "align_loss": ("robust", "infonce"),
                   "dtype": ("fp32", "bf16", "fp16"), "device": ("auto", "cpu", "cuda")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("mf_dim", "mf_batch", "batch_size", "eval_batch_size", "grad_accum", "max_length", "lora_r"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.dtype]

    @property
    def torch_device(self) -> torch.device:
        """cfg.device resolved: "auto" is CUDA when present, else the CPU."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device")
        return torch.device(self.device)


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


def sample_users(num_users: int, cfg: SellaRecConfig) -> set[int]:
    """The users of the LLM train / eval sets: all, or a seeded random sample of `max_users` (not the first N)."""
    if cfg.max_users is None or cfg.max_users >= num_users:
        return set(range(num_users))
    g = torch.Generator().manual_seed(cfg.seed + 17)
    return set(torch.randperm(num_users, generator=g)[:cfg.max_users].tolist())


def build_ctr(data: Interactions, cfg: SellaRecConfig
              ) -> tuple[CTRSet, CTRSet, CTRSet, CTRSet, torch.Tensor, CTRSet]:
    """(mf_train, train, valid, test, train item counts, mf_valid).

    Implicit data: leave-one-out; every training positive (+ `num_neg` sampled negatives) trains MF, the
    latest `train_pos_per_user` of each sampled user (with their histories) tune the LLM; valid / test
    targets come with `eval_neg` sampled negatives (mf_valid: every user's, for MF's early stopping).
    Rated data (MovieLens): every rating is an example, rating >= 4 is Yes, chronological per user (the
    last `rated_eval_per_user` are test, the ones before valid), so users have several test rows and UAUC
    is defined for those whose test ratings hold both labels.
    """
    g = torch.Generator().manual_seed(cfg.seed)
    if data.ratings is not None:
        return _ctr_from_ratings(data, cfg)
    split = leave_one_out(data)
    seqs = split.train.sequences()
    users = sample_users(len(seqs), cfg)
    seen = seen_csr(*data.pairs(), data.num_users, data.num_items)
    # train: the latest `train_pos_per_user` training positives of each user, history = what came before
    pos_u, pos_i, hist = [], [], []
    for u in sorted(users):
        s = seqs[u]
        for k in range(max(1, len(s) - cfg.train_pos_per_user), len(s)):
            pos_u.append(u)
            pos_i.append(s[k])
            hist.append(s[max(0, k - cfg.max_history):k])
    train = _with_negatives(pos_u, pos_i, hist, seen, data.num_items, cfg.num_neg, g)
    evals = {}
    for stage in ("valid", "test"):
        indptr, items = split.history(stage)
        eval_users = split.valid_users if stage == "valid" else split.test_users
        targets = split.valid_targets if stage == "valid" else split.test_targets
        h = [items[indptr[j]:indptr[j + 1]].tolist()[-cfg.max_history:] for j in range(eval_users.numel())]
        full = _with_negatives(eval_users.tolist(), targets.tolist(), h, seen, data.num_items, cfg.eval_neg, g)
        keep = torch.tensor([u in users for u in full.users.tolist()], dtype=torch.bool)
        evals[stage] = (full, _subset(full, keep))
    train_u, train_i = split.train.pairs()  # MF sees every user (cheap); max_users limits the LLM sets
    mf_train = _with_negatives(train_u.tolist(), train_i.tolist(), [[] for _ in range(train_u.numel())],
                               seen, data.num_items, cfg.num_neg, g)
    counts = torch.bincount(split.train.items, minlength=data.num_items)
    return mf_train, train, evals["valid"][1], evals["test"][1], counts, evals["valid"][0]


def _subset(ctr: CTRSet, keep: torch.Tensor) -> CTRSet:
    rows = keep.nonzero().flatten()
    return CTRSet(ctr.users[rows], ctr.items[rows], ctr.labels[rows], [ctr.history[r] for r in rows.tolist()])


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
                      ) -> tuple[CTRSet, CTRSet, CTRSet, CTRSet, torch.Tensor, CTRSet]:
    sampled = sample_users(data.num_users, cfg)
    cols = {name: ([], [], [], []) for name in ("train", "valid", "test", "mf", "mf_valid")}
    for u in range(data.num_users):
        lo, hi = int(data.indptr[u]), int(data.indptr[u + 1])
        items, ratings = data.items[lo:hi].tolist(), data.ratings[lo:hi].tolist()
        n = len(items)
        k = min(cfg.rated_eval_per_user, max((n - 1) // 3, 1))  # short users keep most ratings for training
        liked: list[int] = []
        for j, (i, r) in enumerate(zip(items, ratings, strict=True)):
            stage = "test" if j >= n - k else "valid" if j >= n - 2 * k else "train"
            row = (u, i, float(r >= 4), liked[-cfg.max_history:])
            targets = {"train": ["mf"], "valid": ["mf_valid"], "test": []}[stage]
            llm_train = stage == "train" and j >= n - 2 * k - cfg.train_pos_per_user * 3
            if u in sampled and (stage != "train" or llm_train):
                targets.append(stage)
            for name in targets:
                for col, v in zip(cols[name], row if name != "mf" else (*row[:3], []), strict=True):
                    col.append(v)
            if r >= 4:
                liked.append(i)
    sets = {name: _ctr(*c) for name, c in cols.items()}
    counts = torch.bincount(sets["mf"].items, minlength=data.num_items)
    return sets["mf"], sets["train"], sets["valid"], sets["test"], counts, sets["mf_valid"]


def _ctr(users: list, items: list, labels: list, history: list) -> CTRSet:
    return CTRSet(torch.tensor(users, dtype=torch.int64), torch.tensor(items, dtype=torch.int64),
                  torch.tensor(labels, dtype=torch.float32), history)


# ------------------------------------------------------------------- step 2: MF aligned with the LLM


def robust_infonce(a: torch.Tensor, b: torch.Tensor, tau: float = 0.2, q: float = 0.01,
                   lam: float = 0.1) -> torch.Tensor:
    """The original's robust InfoNCE between rows of a [N, D] and b [N, D] (row n of each is a positive pair).

    Both sides are L2-normalised; with pos = exp(a_n . b_n / tau) and all = sum_m exp(a_n . b_m / tau) (which
    holds pos too), the loss is mean(-(pos^q) / q + (lam (pos + all))^q / q) instead of -log(pos / all).
    Computed in the log domain: x^q = exp(q log x).
    """
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.T / tau
    log_pos = logits.diagonal()
    log_all = torch.logsumexp(logits, dim=1)
    log_sum = torch.logaddexp(log_pos, log_all)  # log(pos + all)
    return (-torch.exp(q * log_pos) / q + torch.exp(q * (math.log(lam) + log_sum)) / q).mean()


def infonce(a: torch.Tensor, b: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    """Plain InfoNCE, -log(pos / all), over normalised rows (fastrec's earlier alignment loss)."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


def _mlp(d_in: int, mid: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, mid), nn.GELU(), nn.Linear(mid, d_out))


class AlignedMF(nn.Module):
    """Step 2 of the original: MF (no bias), a trainable LLM item table initialised from the LLM's item
    vectors, and the item projection Linear(d -> mid) -> GELU -> Linear(mid -> H) between them."""

    def __init__(self, num_users: int, num_items: int, dim: int, llm_items: torch.Tensor, mid: int) -> None:
        super().__init__()
        self.mf = MF(num_users, num_items, dim)
        self.llm_items = nn.Parameter(llm_items.detach().clone().float())
        self.proj = _mlp(dim, mid, llm_items.shape[1])

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.mf.score(users, items)

    def align_loss(self, items: torch.Tensor, cfg: SellaRecConfig) -> torch.Tensor:
        """Robust InfoNCE (or InfoNCE) over the distinct items of a batch (a repeated item would be its own
        false negative)."""
        items = items.unique()
        z = self.proj(self.mf()[1][items])
        t = self.llm_items[items]
        if cfg.align_loss == "robust":
            return robust_infonce(t, z, cfg.tau, cfg.robust_q, cfg.robust_lambda)
        return infonce(t, z, cfg.tau)


def _batches(n: int, size: int, g: torch.Generator | None):
    order = torch.randperm(n, generator=g) if g is not None else torch.arange(n)
    for start in range(0, n, size):
        yield order[start:start + size]


@torch.no_grad()
def _mf_auc(model: nn.Module, ctr: CTRSet, device: torch.device) -> float:
    s = model.score(ctr.users.to(device), ctr.items.to(device)).float().cpu()
    return float(auc(s, ctr.labels))


def train_mf(train: CTRSet, valid: CTRSet, num_users: int, num_items: int, cfg: SellaRecConfig,
             llm_items: torch.Tensor | None = None) -> AlignedMF | MF:
    """Step 2: MF with BCE on (user, item, label), jointly with the alignment when `llm_items` [I, H] is given
    (loss = BCE + robust InfoNCE). Adam (lr, wd), batches of `mf_batch`, validation AUC after every epoch;
    stops after `mf_patience` epochs without a better one and returns the best epoch's model."""
    device = cfg.torch_device
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model: AlignedMF | MF
    if llm_items is not None:
        model = AlignedMF(num_users, num_items, cfg.mf_dim, llm_items, cfg.proj_mid).to(device)
    else:
        model = MF(num_users, num_items, cfg.mf_dim).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.mf_lr, weight_decay=cfg.mf_wd)
    best, best_state, waited = -1.0, None, 0
    hist: dict[str, list[float]] = {"mf_loss": [], "mf_align_loss": [], "mf_valid_auc": []}
    users, items, labels = train.users.to(device), train.items.to(device), train.labels.to(device)
    bar = tqdm(range(cfg.mf_epochs), desc="sellarec 2/3 MF" + (" + alignment" if llm_items is not None else ""),
               unit="epoch", disable=not cfg.progress, mininterval=2.0)
    for _ in bar:
        model.train()
        total, total_align = 0.0, 0.0
        for idx in _batches(len(train), cfg.mf_batch, g):
            idx = idx.to(device)
            u, i = users[idx], items[idx]
            loss = F.binary_cross_entropy_with_logits(model.score(u, i), labels[idx])
            if llm_items is not None:
                align = model.align_loss(i, cfg)
                total_align += float(align.detach()) * idx.numel()
                loss = loss + align
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        model.eval()
        valid_auc = _mf_auc(model, valid, device)
        hist["mf_loss"].append(total / len(train))
        hist["mf_align_loss"].append(total_align / len(train))
        hist["mf_valid_auc"].append(valid_auc)
        bar.set_postfix(valid_auc=f"{valid_auc:.4f}", best=f"{max(best, valid_auc):.4f}")
        if valid_auc > best:
            best, best_state, waited = valid_auc, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= cfg.mf_patience:
                break
    if llm_items is None:
        hist.pop("mf_align_loss")
    cfg.history.update(hist)
    model.load_state_dict(best_state)
    return model.eval()


def align_frozen(proj: HybridProjection, mf: MF, text: torch.Tensor, train: CTRSet, cfg: SellaRecConfig) -> None:
    """fastrec's earlier step 2b (``--align frozen``): MF fixed, the user / item projections learn the
    alignment loss between item_proj(q_i) and the LLM item vector, plus BCE on <user_proj(p_u), item_proj(q_i)>."""
    device = next(proj.parameters()).device
    g = torch.Generator().manual_seed(cfg.seed + 1)
    params = list(proj.user.parameters()) + list(proj.item.parameters())
    opt = torch.optim.Adam(params, lr=cfg.align_lr)
    users_w, items_w = (t.detach().to(device, proj.item[0].weight.dtype) for t in mf())
    target = text.to(device, items_w.dtype)
    scale = 1.0 / math.sqrt(proj.hidden_size)
    losses = []
    for _ in tqdm(range(cfg.align_epochs), desc="sellarec 2/3 align (MF frozen)", unit="epoch",
                  disable=not cfg.progress):
        total = 0.0
        for idx in _batches(len(train), 256, g):
            u, i, y = (t[idx].to(device) for t in (train.users, train.items, train.labels))
            items_b = i.unique()
            z = proj("item", items_w[items_b])
            if cfg.align_loss == "robust":
                nce = robust_infonce(target[items_b], z, cfg.tau, cfg.robust_q, cfg.robust_lambda)
            else:
                nce = infonce(target[items_b], z, cfg.tau)
            logit = (proj("user", users_w[u]) * proj("item", items_w[i])).sum(-1) * scale
            loss = nce + F.binary_cross_entropy_with_logits(logit.float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        losses.append(total / len(train))
    cfg.history["align_loss"] = losses


# ------------------------------------------------------------------------------ the Yes/No answer


@dataclass(frozen=True)
class AnswerTokens:
    """How the answer follows the prompt: `prefix` tokens both answers start with (a bare "▁" with a
    SentencePiece tokenizer such as Llama-2's or Mistral's), then the token that tells Yes from No."""

    prefix: tuple[int, ...]
    yes: int
    no: int


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def answer_tokens(tok: Any, prompt_tail: str = "Answer :") -> AnswerTokens:
    """The answer tokens, found by encoding both answers in context (after the prompt's last words) and
    taking the first token where the two encodings differ; the tokens before it are the shared prefix.

    When the answer re-tokenises the end of the prompt, the answers are encoded on their own instead.
    Raises a ValueError naming the problem when the tokenizer cannot encode an answer or cannot tell
    "Yes" from "No" (then scoring would compare a token with itself)."""
    base = tok.encode(prompt_tail, add_special_tokens=False)
    enc = [tok.encode(f"{prompt_tail} {w}", add_special_tokens=False) for w in ("Yes", "No")]
    if all(e[:len(base)] == base for e in enc):
        yes, no = (e[len(base):] for e in enc)
    else:
        yes, no = (tok.encode(f" {w}", add_special_tokens=False) for w in ("Yes", "No"))
    unk = getattr(tok, "unk_token_id", None)
    for word, ids in (("Yes", yes), ("No", no)):
        if not ids or (unk is not None and unk in ids):
            raise ValueError(f"the tokenizer cannot encode the answer {word!r} (it becomes {ids})")
    d = _common(yes, no)
    if d >= min(len(yes), len(no)):
        raise ValueError(f"the tokenizer cannot tell the answers apart: ' Yes' / ' No' encode to {yes} / {no}")
    return AnswerTokens(tuple(yes[:d]), yes[d], no[d])


def _tail(prompt: str) -> str:
    """The prompt's last two words: the context the answers are encoded in."""
    return " ".join(prompt.split()[-2:])


def answer_token_ids(tok: Any) -> tuple[int, int]:
    """Ids of the tokens that tell "Yes" from "No" after the prompt (see :func:`answer_tokens`)."""
    ans = answer_tokens(tok)
    return ans.yes, ans.no


def _prompts(data: Interactions, ctr: CTRSet, rows: torch.Tensor, template: str = PROMPT) -> list[str]:
    out = []
    for r in rows.tolist():
        hist = " , ".join(_title(data, i) for i in ctr.history[r]) or "nothing yet"
        out.append(template.format(history=hist, title=_title(data, int(ctr.items[r]))))
    return out


def _encode(tok: Any, prompts: list[str], labels: list[float] | None, max_length: int = 768,
            answer: AnswerTokens | None = None) -> dict[str, torch.Tensor]:
    """Right-padded batch of prompt + answer prefix (+ the answer token when `labels` are given).

    `labels` hold only the answer token (loss on the answer only); `last` is the position whose logits score
    Yes / No. Prompts longer than `max_length` lose their oldest tokens (the history comes first)."""
    answer = answer or answer_tokens(tok)
    prefix = list(answer.prefix)
    tail = len(prefix) + (1 if labels is not None else 0)
    p_ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
    p_ids = [p[-(max_length - tail):] if len(p) + tail > max_length else p for p in p_ids]
    a_ids = [prefix + [answer.yes if y > 0.5 else answer.no] for y in labels] if labels is not None else \
        [prefix for _ in prompts]
    seqs = [p + a for p, a in zip(p_ids, a_ids, strict=True)]
    width = max(len(s) for s in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(seqs), width), pad, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    target = torch.full_like(ids, -100)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s)
        mask[r, :len(s)] = 1
        if labels is not None:
            target[r, len(s) - 1] = s[-1]
    last = torch.tensor([len(p) + len(prefix) - 1 for p in p_ids])
    return {"input_ids": ids, "attention_mask": mask, "labels": target, "last": last}


def _collab(ctr: CTRSet, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    items = ctr.items[rows]
    return {"user": ctr.users[rows], "item": items, "warm": items}


class PromptCollator:
    """Turns example indices into a training batch for transformers.Trainer (collab rows included when the
    model has the collab tokens)."""

    def __init__(self, tok: Any, data: Interactions, ctr: CTRSet, cfg: SellaRecConfig, collab: bool) -> None:
        self.tok, self.data, self.ctr, self.cfg, self.collab = tok, data, ctr, cfg, collab
        self.answer = answer_tokens(tok, _tail(cfg.prompt if collab else cfg.plain_prompt))

    def __call__(self, rows: list[int]) -> dict[str, Any]:
        idx = torch.tensor(rows, dtype=torch.int64)
        template = self.cfg.prompt if self.collab else self.cfg.plain_prompt
        batch = _encode(self.tok, _prompts(self.data, self.ctr, idx, template), self.ctr.labels[idx].tolist(),
                        self.cfg.max_length, self.answer)
        batch.pop("last")
        if self.collab:
            batch["collab"] = _collab(self.ctr, idx)
        return batch


def _peft(model: nn.Module, cfg: SellaRecConfig) -> nn.Module:
    import peft

    targets: Any = cfg.lora_targets if cfg.lora_targets == "all-linear" else cfg.lora_targets.split(",")
    # a tiny LLM from a config has a random output head whose logits barely move from uniform (std 0.02
    # weights over a small hidden size): it trains in full beside the adapters; a real LLM's head stays frozen
    save = ["lm_head"] if not cfg.model else None
    lora = peft.get_peft_model(model, peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                      lora_dropout=cfg.lora_dropout, target_modules=targets,
                                                      modules_to_save=save, task_type="CAUSAL_LM"))
    try:
        emb = collab_embedding(lora)
    except ValueError:
        return lora
    for p in emb.projection.parameters():  # the projections keep training in step 3
        p.requires_grad_(True)
    return lora


def tune(model: nn.Module, tok: Any, data: Interactions, train: CTRSet, cfg: SellaRecConfig, collab: bool,
         epochs: float, lr: float, name: str, steps: int | None = None, resume: str | None = None) -> None:
    """LoRA tuning through transformers.Trainer with the engine's arguments (fastrec.train.training_arguments:
    per-device batch, accumulation, bf16/fp16, gradient checkpointing, checkpoints with manifests, seeds):
    causal-LM loss on the answer token only, AdamW with weight decay and beta2, cosine schedule. Run under
    `torchrun` / `accelerate launch` it spreads over several GPUs. Checkpoints (cfg.save_every) and metrics
    go to OUT/{step1,step3}; `resume` ("latest" or a checkpoint folder) continues from one."""
    from transformers import Trainer

    from fastrec import train as engine

    folder = Path(cfg.out) / ("step1" if name == "tallrec" else "step3")
    tcfg = engine.TrainConfig(device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                              lr=lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                              max_grad_norm=cfg.max_grad_norm, epochs=max(1, math.ceil(epochs)), steps=steps,
                              gradient_checkpointing=cfg.gradient_checkpointing, save_every=cfg.save_every,
                              seed=cfg.seed, progress=cfg.progress)
    args = engine.training_arguments(tcfg, folder, num_train_epochs=epochs, lr_scheduler_type=cfg.lr_scheduler,
                                     adam_beta2=cfg.adam_beta2)
    projection = collab_embedding(model).projection if collab else None
    checkpoint = None
    if resume:
        checkpoint = engine.latest_checkpoint(folder) if resume == "latest" else Path(resume)
        if checkpoint is None:
            raise engine.CheckpointError(f"resume: no complete checkpoint in {folder / 'checkpoints'}")
        engine.verify_checkpoint(checkpoint)
        if projection is not None:  # not part of the LoRA adapter the Trainer saves
            projection.load_state_dict(torch.load(checkpoint / PROJECTION_FILE, map_location="cpu",
                                                  weights_only=True))
    callbacks = [engine.JsonlMetrics(folder / "metrics.jsonl")]
    if projection is not None:
        callbacks.append(_ProjectionCheckpoint(projection))
    trainer = Trainer(model=model, args=args, train_dataset=_Indices(len(train)),
                      data_collator=PromptCollator(tok, data, train, cfg, collab),
                      callbacks=[*callbacks, engine.CheckpointManifest()])  # the manifest last: it seals the folder
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    cfg.history[f"{name}_loss"] = [float(r["loss"]) for r in trainer.state.log_history if "loss" in r]
    model.eval()


PROJECTION_FILE = "collab_projection.pt"


def _projection_checkpoint_base():
    from transformers import TrainerCallback

    return TrainerCallback


class _ProjectionCheckpoint(_projection_checkpoint_base()):
    """Trainer callback: the collab projections (trained in step 3 but outside the LoRA adapter) go into every
    checkpoint, so --resume continues them too."""

    def __init__(self, projection: nn.Module) -> None:
        self.projection = projection

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            torch.save({k: v.detach().cpu() for k, v in self.projection.state_dict().items()},
                       folder / PROJECTION_FILE)


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


@torch.no_grad()
def score(model: nn.Module, tok: Any, data: Interactions, ctr: CTRSet, cfg: SellaRecConfig,
          collab: bool = True, zero_rows: bool = False) -> torch.Tensor:
    """P(Yes) = softmax over the Yes / No logits at the answer position, one per example.

    ``zero_rows``: the spliced collab rows are replaced by zeros (the ablation showing what they carry)."""
    template = cfg.prompt if collab else cfg.plain_prompt
    answer = answer_tokens(tok, _tail(template))
    device = next(model.parameters()).device
    out = torch.empty(len(ctr))
    model.eval()
    for idx in tqdm(list(_batches(len(ctr), cfg.eval_batch_size, None)), desc="sellarec score", unit="batch",
                    leave=False, disable=not cfg.progress):
        batch = _encode(tok, _prompts(data, ctr, idx, template), None, cfg.max_length, answer)
        last = batch.pop("last").to(device)
        batch.pop("labels")
        batch = {k: v.to(device) for k, v in batch.items()}
        if collab and zero_rows:  # the spliced rows are zeros: placeholders become pad, then zeroed
            emb = collab_embedding(model)
            ids = batch.pop("input_ids")
            is_slot = torch.isin(ids, emb.placeholder_ids)
            embeds = emb.embedding(ids.masked_fill(is_slot, 0))
            batch["inputs_embeds"] = embeds.masked_fill(is_slot.unsqueeze(-1), 0.0)
        elif collab:
            batch["collab"] = {k: v.to(device) for k, v in _collab(ctr, idx).items()}
        logits = model(**batch).logits
        pair = logits[torch.arange(idx.numel(), device=device), last][:, [answer.yes, answer.no]].float()
        out[idx] = pair.softmax(-1)[:, 0].cpu()
    return out


def metrics(scores: torch.Tensor, ctr: CTRSet, warm: torch.Tensor) -> dict[str, float]:
    """AUC and UAUC over all examples and separately over warm and cold target items.

    UAUC averages the AUC of the users whose examples hold both labels; where no user does, it is NaN (with
    a warning from fastrec.eval.uauc), never a number made up."""
    res: dict[str, float] = {}
    is_warm = warm[ctr.items]
    for name, keep in (("all", torch.ones_like(is_warm)), ("warm", is_warm), ("cold", ~is_warm)):
        y, s, u = ctr.labels[keep], scores[keep], ctr.users[keep]
        ok = bool((y > 0.5).any() and (y < 0.5).any())
        res[f"auc_{name}"] = float(auc(s, y)) if ok else float("nan")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported below as the number of users it averages
            res[f"uauc_{name}"] = float(uauc(s, y, u)) if ok else float("nan")
        res[f"n_{name}"] = int(keep.sum())
        res[f"uauc_users_{name}"] = _users_with_both(y, u)
    return res


def _users_with_both(y: torch.Tensor, u: torch.Tensor) -> int:
    if u.numel() == 0:
        return 0
    _, g = torch.unique(u, return_inverse=True)
    pos = torch.zeros(int(g.max()) + 1).index_add_(0, g, y.float())
    tot = torch.bincount(g).float()
    return int(((pos > 0) & (pos < tot)).sum())


# --------------------------------------------------------------------------------------- pipeline


def _tiny_llm(vocab: int, cfg: SellaRecConfig) -> nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(cfg.seed)
    conf = LlamaConfig(vocab_size=vocab, hidden_size=cfg.tiny_hidden, intermediate_size=cfg.tiny_hidden * 2,
                       num_hidden_layers=cfg.tiny_layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=max(1024, cfg.max_length))
    return AutoModelForCausalLM.from_config(conf, attn_implementation="sdpa")


def _llm(data: Interactions, cfg: SellaRecConfig, out: Path | None) -> tuple[nn.Module, Any]:
    """(model, tokenizer) on cfg.device in cfg.dtype: a local checkpoint (`--model`, local files only) or a
    tiny Llama with the project's own word tokenizer over the prompts and every title."""
    if cfg.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(cfg.model, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(cfg.model, local_files_only=True, dtype=cfg.torch_dtype)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return model.to(cfg.torch_device), tok
    if out is not None and (out / "tokenizer").is_dir():
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(out / "tokenizer")
    else:
        words = [cfg.prompt, cfg.plain_prompt, ITEM_PROMPT, "Yes No nothing yet"]
        tok = word_tokenizer(words + [_title(data, i) for i in range(data.num_items)])
    return _tiny_llm(len(tok), cfg).to(cfg.torch_device, cfg.torch_dtype), tok


def item_vectors(llm: nn.Module, tok: Any, data: Interactions) -> torch.Tensor:
    """The LLM's last hidden state at the final token of "Item: {title}" for every item, float32 [I, H]."""
    from fastrec.data.text import text_embeddings

    texts = [ITEM_PROMPT.format(title=_title(data, i)) for i in range(data.num_items)]
    with torch.no_grad():
        return text_embeddings(texts, model=llm, tokenizer=tok, pooling="last", batch_size=64, progress=False)


def build_projection(hidden: int, warm_dim: int, cfg: SellaRecConfig, aligned: AlignedMF | None = None
                     ) -> HybridProjection:
    """User / item: Linear(d -> mid) -> GELU -> Linear(mid -> H); warm: Linear(H_warm -> H). With `aligned`
    (step 2 joint), both start from the item projection learned with the alignment (MF user and item vectors
    share one space: their dot product is the score)."""
    proj = HybridProjection(hidden, cfg.mf_dim, cfg.mf_dim, warm_dim, mid=cfg.proj_mid)
    if aligned is not None:
        proj.item.load_state_dict(aligned.proj.state_dict())
        proj.user.load_state_dict(aligned.proj.state_dict())
    return proj


def _attach(model: nn.Module, tok: Any, proj: HybridProjection, tables: dict[str, torch.Tensor],
            cfg: SellaRecConfig) -> HybridProjection:
    """The collab tokens on `model`; the projection and the tables go to the model's device and dtype."""
    weight = model.get_input_embeddings().weight
    proj = proj.to(weight.device, weight.dtype)
    attach_collab_tokens(model, tok, TOKENS, projection=proj)
    collab_embedding(model).set_tables(**{k: v.detach() for k, v in tables.items()})  # cast and moved once
    return proj


def step1_tallrec(llm: nn.Module, tok: Any, data: Interactions, train: CTRSet, cfg: SellaRecConfig
                  ) -> tuple[torch.Tensor, nn.Module | None]:
    """Step 1: (item vectors [I, H], the TALLRec-tuned model or None).

    With cfg.tallrec the LLM alone learns the Yes/No task (LoRA adapters around `llm`) and the item vectors
    come from the tuned model; ``tuned.unload()`` gives the base weights back (step 3 starts from them, as
    the original does). Otherwise the item vectors come from the untuned LLM."""
    if not cfg.tallrec:
        return item_vectors(llm, tok, data), None
    tuned = _peft(llm, cfg)
    tune(tuned, tok, data, train, cfg, collab=False, epochs=cfg.tallrec_epochs, lr=cfg.tallrec_lr, name="tallrec")
    return item_vectors(tuned, tok, data), tuned


def step2_collab(mf_train: CTRSet, mf_valid: CTRSet, num_users: int, num_items: int, text: torch.Tensor,
                 cfg: SellaRecConfig) -> tuple[MF, dict[str, torch.Tensor], AlignedMF | None]:
    """Step 2: (MF, tables {user, item, warm} for the collab tokens, the aligned model of the joint mode)."""
    if cfg.align == "joint":
        aligned = train_mf(mf_train, mf_valid, num_users, num_items, cfg, llm_items=text)
        mf, warm_table = aligned.mf, aligned.llm_items.detach()
    else:
        aligned, warm_table = None, text
        mf = train_mf(mf_train, mf_valid, num_users, num_items, cfg)
    users_w, items_w = (t.detach() for t in mf())
    return mf, {"user": users_w, "item": items_w, "warm": warm_table}, aligned


def step3_sellarec(llm: nn.Module, tok: Any, data: Interactions, train: CTRSet, mf: MF,
                   tables: dict[str, torch.Tensor], aligned: AlignedMF | None, cfg: SellaRecConfig,
                   text: torch.Tensor | None = None, mf_train: CTRSet | None = None) -> nn.Module:
    """Step 3: the collab tokens on `llm` (projections from step 2), LoRA tuning; returns the tuned model.
    The frozen mode (``--align frozen``) first aligns the projections on `mf_train` against `text`."""
    proj = build_projection(llm.get_input_embeddings().weight.shape[1], tables["warm"].shape[1], cfg, aligned)
    proj = _attach(llm, tok, proj, tables, cfg)
    if cfg.align == "frozen":
        align_frozen(proj, mf, text, mf_train, cfg)
    lora = _peft(llm, cfg)
    tune(lora, tok, data, train, cfg, collab=True, epochs=cfg.lora_epochs, lr=cfg.lora_lr, name="lora",
         steps=cfg.lora_steps, resume=cfg.resume)
    return lora


def train(cfg: SellaRecConfig) -> dict[str, Any]:
    """All three steps, then AUC / UAUC on the test split; everything is saved under cfg.out.

    results: "mf" (step 2's MF alone), "tallrec" (step 1's LLM without collab tokens, when it ran) and
    "sellarec"."""
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, cfg.seed)
    mf_tr, tr, _, te, counts, mf_va = build_ctr(data, cfg)
    warm = counts >= cfg.cold_threshold
    results: dict[str, Any] = {}
    llm, tok = _llm(data, cfg, None)
    text, tallrec = step1_tallrec(llm, tok, data, tr, cfg)
    if tallrec is not None:
        results["tallrec"] = metrics(score(tallrec, tok, data, te, cfg, collab=False), te, warm)
        llm = tallrec.unload()
    mf, tables, aligned = step2_collab(mf_tr, mf_va, data.num_users, data.num_items, text, cfg)
    with torch.no_grad():
        device = next(mf.parameters()).device
        results["mf"] = metrics(torch.sigmoid(mf.score(te.users.to(device), te.items.to(device))).cpu(), te, warm)
    lora = step3_sellarec(llm, tok, data, tr, mf, tables, aligned, cfg, text, mf_tr)
    results["sellarec"] = metrics(score(lora, tok, data, te, cfg), te, warm)
    results = {k: results[k] for k in ("mf", "tallrec", "sellarec") if k in results}
    _save(Path(cfg.out), cfg, lora, tok, tables, counts, results)
    return results


def _atomic_dir(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))


def _save(out: Path, cfg: SellaRecConfig, lora: nn.Module, tok: Any, tables: dict[str, torch.Tensor],
          counts: torch.Tensor, results: dict) -> None:
    """Write to a temporary folder, then swap it in: an interrupted run never leaves a half-written result."""
    from peft import get_peft_model_state_dict

    tmp = _atomic_dir(out)
    emb = collab_embedding(lora)
    state = {"tables": {k: v.detach().float().cpu() for k, v in tables.items()}, "counts": counts,
             "projection": {k: v.cpu() for k, v in emb.projection.state_dict().items()},
             "lora": {k: v.cpu() for k, v in get_peft_model_state_dict(lora).items()}}
    if not cfg.model:  # the tiny base model is random: keep every weight of the tuned model
        state["full"] = {k: v.cpu() for k, v in lora.state_dict().items()}
    torch.save(state, tmp / "sellarec.pt")
    tok.save_pretrained(tmp / "tokenizer")
    (tmp / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    (tmp / "results.json").write_text(json.dumps(results, indent=2))
    _plot(cfg, results, tmp / "sellarec.png")
    for step in ("step1", "step3"):  # the Trainer's per-step metrics (checkpoints are dropped: the run is done)
        if (out / step / "metrics.jsonl").is_file():
            (tmp / step).mkdir()
            shutil.copy(out / step / "metrics.jsonl", tmp / step / "metrics.jsonl")
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
        if values:
            axes[0].plot(range(1, len(values) + 1), values, label=name)
    axes[0].set(xlabel="epoch (MF) / step (LoRA)", ylabel="loss / AUC", title="training")
    axes[0].legend(fontsize=7)
    groups = ["all", "warm", "cold"]
    width = 0.8 / max(len(results), 1)
    for k, (model, res) in enumerate(results.items()):
        axes[1].bar([x + width * k for x in range(3)], [res[f"auc_{gname}"] for gname in groups], width, label=model)
    axes[1].set_xticks([x + 0.4 - width / 2 for x in range(3)], groups)
    axes[1].axhline(0.5, color="grey", lw=0.8)
    axes[1].set(ylabel="test AUC", ylim=(0.3, 1.0), title="AUC by target item")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_run(out: str | Path, data: str | None = None, device: str | None = None
             ) -> tuple[nn.Module, Any, Interactions, SellaRecConfig, dict]:
    """(tuned model, tokenizer, data, config, saved state) of a run saved under `out`."""
    out = Path(out)
    if not (out / "sellarec.pt").is_file():
        raise ValueError(f"out: {out} holds no trained SeLLa-Rec run (sellarec.pt missing)")
    saved = json.loads((out / "config.json").read_text())
    cfg = SellaRecConfig(**{k: v for k, v in saved.items() if k in {f.name for f in fields(SellaRecConfig)}})
    if data is not None:
        cfg.data = data
    if device is not None:
        cfg.device = device
    state = torch.load(out / "sellarec.pt", map_location="cpu", weights_only=True)
    dataset = load_data(cfg.data, cfg.seed)
    llm, tok = _llm(dataset, cfg, out)
    tables = state["tables"]
    proj = build_projection(llm.get_input_embeddings().weight.shape[1], tables["warm"].shape[1], cfg)
    proj = _attach(llm, tok, proj, tables, cfg)
    lora = _peft(llm, cfg)
    if "full" in state:
        lora.load_state_dict(state["full"])
    else:
        from peft import set_peft_model_state_dict

        proj.load_state_dict(state["projection"])
        set_peft_model_state_dict(lora, state["lora"])
    return lora.eval(), tok, dataset, cfg, state


def evaluate(out: str | Path, data: str | None = None, device: str | None = None) -> dict[str, Any]:
    """Reload a trained run from `out` and recompute its test AUC / UAUC (all, warm, cold)."""
    lora, tok, dataset, cfg, state = load_run(out, data, device)
    _, _, _, te, _, _ = build_ctr(dataset, cfg)
    warm = state["counts"] >= cfg.cold_threshold
    return {"sellarec": metrics(score(lora, tok, dataset, te, cfg), te, warm)}


# -------------------------------------------------------------------------------------------- CLI


def format_results(results: dict[str, dict[str, float]]) -> str:
    lines = [f"{'model':10s} {'AUC':>7s} {'UAUC':>7s} {'AUC warm':>9s} {'UAUC warm':>10s} {'AUC cold':>9s} "
             f"{'UAUC cold':>10s}  n (warm/cold)  UAUC users"]
    for name, r in results.items():
        lines.append(f"{name:10s} {r['auc_all']:7.4f} {r['uauc_all']:7.4f} {r['auc_warm']:9.4f} "
                     f"{r['uauc_warm']:10.4f} {r['auc_cold']:9.4f} {r['uauc_cold']:10.4f}  "
                     f"{r['n_all']} ({r['n_warm']}/{r['n_cold']})  {r.get('uauc_users_all', '-')}")
    return "\n".join(lines)


# Tuned so the demo shows the recipe working: with every user, 5 LoRA epochs at lr 5e-3 and no LoRA dropout,
# SeLLa-Rec's test AUC is 0.762 / 0.819 against MF's 0.732 / 0.787 (seeds 0 / 1, about 50 s on 2 CPU cores);
# the earlier 200 users x 2 epochs at 2e-3 left it at chance (0.50).
DEMO = dict(mf_dim=32, mf_epochs=60, mf_patience=10, mf_batch=1024, proj_mid=64, tallrec_epochs=1.0,
            tallrec_lr=2e-3, lora_r=8, lora_alpha=16, lora_dropout=0.0, lora_epochs=5.0, lora_lr=5e-3,
            max_users=None, eval_neg=3, train_pos_per_user=2, tiny_hidden=32, batch_size=16,
            gradient_checkpointing=False, max_length=256)


def demo_config(out: str, **overrides: Any) -> SellaRecConfig:
    """A configuration that runs in seconds on the embedded synthetic data set; `overrides` (e.g. data,
    model, device from the command line) take precedence."""
    return SellaRecConfig(out=out, **{**DEMO, **overrides})


def demo(out: str) -> dict[str, Any]:
    """The `fastrec demo` step: the whole recipe on the embedded synthetic data set (seconds on a CPU)."""
    results = train(demo_config(out))
    print("SeLLa-Rec demo (synthetic data, tiny Llama from a config), test split:")
    print(format_results(results))
    return results


_SKIP = {"out", "history"}
# the engine's shared flags (fastrec.train.add_training_args) and the config field each one sets
ENGINE_FLAGS = {"device": "device", "dtype": "dtype", "batch_size": "batch_size", "grad_accum": "grad_accum",
                "lr": "lora_lr", "weight_decay": "weight_decay", "warmup_steps": "warmup_steps",
                "scheduler": "lr_scheduler", "max_grad_norm": "max_grad_norm", "epochs": "lora_epochs",
                "steps": "lora_steps",
                "gradient_checkpointing": "gradient_checkpointing", "save_every": "save_every", "resume": "resume",
                "seed": "seed", "patience": "mf_patience", "progress": "progress", "lora_r": "lora_r",
                "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout", "lora_targets": "lora_targets"}


def config_from_args(args: argparse.Namespace) -> SellaRecConfig:
    """The config of `fastrec sellarec train`: the defaults (or the demo's with --demo), then every flag given
    (with --demo, an engine flag left at its default keeps the demo's value)."""
    base = SellaRecConfig()
    values: dict[str, Any] = {}
    for flag, name in ENGINE_FLAGS.items():
        v = getattr(args, flag, None)
        if name == "max_grad_norm" and v == 0:
            v = None
        if not (args.demo and v == getattr(base, name)):
            values[name] = v
    for f in fields(SellaRecConfig):
        # an engine flag's field is set by the loop above only (its argparse default is not a user's choice)
        if f.name in _SKIP or f.name in ENGINE_FLAGS.values():
            continue
        if getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    if args.demo:
        return demo_config(args.out, **values)
    return SellaRecConfig(out=args.out, **values)


def _cli(args: argparse.Namespace) -> int:
    if args.action == "eval":
        print(format_results(evaluate(args.out, args.data, args.device)))
        return 0
    cfg = config_from_args(args)
    results = train(cfg)
    print(format_results(results))
    print(f"wrote {cfg.out}/ (results.json, sellarec.png, sellarec.pt, tokenizer/)")
    return 0


def add_parser(sub: Any) -> None:
    """`fastrec sellarec train|eval`: the engine's shared flags (fastrec.train; --lr, --epochs and --steps are
    step 3's, --patience is MF's early stopping) and a flag for every other field of SellaRecConfig."""
    from fastrec import train as engine

    p = sub.add_parser("sellarec", help="SeLLa-Rec: TALLRec tuning, MF aligned jointly, LoRA with collab tokens; "
                                        "AUC/UAUC warm and cold")
    p.add_argument("action", choices=["train", "eval"])
    p.add_argument("--out", default="results/sellarec")
    p.add_argument("--demo", action="store_true", help="the small, fast demo configuration (other flags still apply)")
    defaults = SellaRecConfig()
    engine.add_training_args(p, llm=True, lora=True, lora_targets=tuple(defaults.lora_targets.split(",")),
                             **{flag: getattr(defaults, name) for flag, name in ENGINE_FLAGS.items()
                                if flag not in ("lora_targets",)})
    p.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    for f in fields(SellaRecConfig):
        if f.name in _SKIP or f.name in ENGINE_FLAGS.values():
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        helptext = f"default: {default}"
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        else:
            kind = {int: int, float: float}.get(type(default), str)
            if f.name in ("max_users",):
                kind = int
            p.add_argument(flag, type=kind, default=None, help=helptext)
    p.set_defaults(func=_cli)
