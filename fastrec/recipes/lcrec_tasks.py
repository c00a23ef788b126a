"""LC-Rec's alignment-tuning tasks on top of semantic item indices, and the tokenizer extension.

Six task builders produce (instruction, response) pairs in LC-Rec's instruction template; `LCRecDataset`
tokenizes them with the loss on the response only (prompt labels are -100), and `LCRecCollator` pads a
batch; both plug into `transformers.Trainer` as they are. Prompts are drawn from small pools per task in
the spirit of LC-Rec's, with a seeded generator.

itemsearch and preferenceobtain use LLM-written user intentions and preferences in LC-Rec; data sets
without them (the embedded synthetic set, amazon-scientific here) get them composed from item metadata
(categories and brands of the user's items), which is stated in the prompts' data, not hidden.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import torch

TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\n{instruction}\n\n### Response:")
# "alpaca" is LC-Rec's; "short" keeps only the instruction and the response marker, which spares a small
# model trained from scratch the 30 tokens of preamble every example would repeat; "compact" (with
# COMPACT_PROMPTS) keeps only the task name and its fields
TEMPLATES = {"alpaca": TEMPLATE, "short": "### Instruction:\n{instruction}\n### Response:",
             "compact": "{instruction} =>"}

PROMPTS: dict[str, list[str]] = {
    "seqrec": [
        "The user has interacted with items {history} in chronological order. Can you predict the next possible "
        "item that the user may expect?",
        "Here is the item interaction history of the user: {history}. What to recommend to the user next?",
        "Based on the items the user has interacted with: {history}, can you determine what item would be "
        "recommended to the user next?",
    ],
    "item2index": [
        "Which item has the title: \"{title}\"?",
        "An item is called \"{title}\" and described as: {description}. Which item is it?",
        "Can you find the item with the following title: {title}?",
    ],
    "index2item": [
        "What is the title of item {index}?",
        "Please tell me the title of item {index}.",
    ],
    "fusionseqrec": [
        "The user has sequentially interacted with items {history}. Can you recommend the next item? Tell me the "
        "title of the item.",
        "Given the user's interaction history {history}, what is the title of the item the user will pick next?",
    ],
    "itemsearch": [
        "Here is the historical interactions of a user: {history}. And the user's intention: {query}. Find an "
        "item that matches the intention.",
        "The user is looking for: {query}. Given the past items {history}, which item should be recommended?",
    ],
    "preferenceobtain": [
        "The user has interacted with items {history} in chronological order. Please summarize the user's "
        "preferences.",
        "Analyse the preferences of a user who interacted with {history}.",
    ],
}
TASKS = tuple(PROMPTS)
# the "compact" template: the task name and its fields only, no instruction prose (a small model trained
# from scratch gains nothing from it, and it would double the tokens of every seqrec example)
COMPACT_PROMPTS: dict[str, list[str]] = {
    "seqrec": ["seqrec: {history}"],
    "item2index": ["item2index: {title}"],
    "index2item": ["index2item: {index}"],
    "fusionseqrec": ["fusionseqrec: {history}"],
    "itemsearch": ["itemsearch: {query} | {history}"],
    "preferenceobtain": ["preferenceobtain: {history}"],
}


def add_index_tokens(model, tokenizer, index: dict, codebooks: torch.Tensor | None = None, seed: int = 0,
                     mean_init: bool = True) -> int:
    """Add every token of `index` to the tokenizer and resize the model's embeddings; returns how many.

    New input-embedding rows start at the mean of the existing rows (`mean_init`, for a pretrained model;
    a model trained from scratch keeps its random initial rows, which tell the tokens apart); with
    `codebooks` [L, K, D] each
    token `<level_code>` adds its codebook vector through a fixed random projection D -> H scaled to the
    embeddings' spread, so related codes start close.
    """
    tokens = sorted({t for row in index.values() for t in row}, key=lambda t: (t[1], int(t[3:-1])))
    added = tokenizer.add_tokens(tokens)
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        mean, std = emb[:old].mean(0), emb[:old].std()
        ids = tokenizer.convert_tokens_to_ids(tokens)
        new = [(t, i) for t, i in zip(tokens, ids, strict=True) if i >= old]
        for _, i in new:
            if mean_init:
                emb[i] = mean
        if codebooks is not None and new:
            g = torch.Generator().manual_seed(seed)
            proj = torch.linalg.qr(torch.randn(emb.shape[1], codebooks.shape[2], generator=g))[0].t()  # [D, H]
            cb = codebooks.detach().float()
            scale = std / cb.std().clamp_min(1e-8)
            for t, i in new:
                level, code = ord(t[1]) - ord("a"), int(t[3:-1])
                emb[i] += (cb[level, code] @ proj.to(cb.device) * scale).to(emb.dtype)
    return added


def _spell(index: dict, items: Sequence[int]) -> str:
    return ", ".join("".join(index[str(i)]) for i in items)


def _title(item_text: dict, item: int) -> str:
    return str((item_text.get(item) or {}).get("title", "")).strip() or f"item {item}"


def _categories(item_text: dict, item: int) -> list[str]:
    cats = str((item_text.get(item) or {}).get("categories", ""))
    return [c.strip() for c in cats.replace(">", ",").split(",") if c.strip()]


def _query(item_text: dict, item: int) -> str:
    meta = item_text.get(item) or {}
    cats = _categories(item_text, item)
    what = cats[-1] if cats else _title(item_text, item)
    brand = str(meta.get("brand", "")).strip()
    return f"a {what.lower()}" + (f" from {brand}" if brand else "")


def _preference(item_text: dict, items: Sequence[int]) -> str:
    cats = Counter(c for i in items for c in _categories(item_text, i)[1:])
    brands = Counter(str((item_text.get(i) or {}).get("brand", "")).strip() for i in items)
    brands.pop("", None)
    top = [c for c, _ in cats.most_common(3)] or ["varied items"]
    text = "The user prefers " + ", ".join(top).lower()
    if brands:
        text += " and likes the brand " + brands.most_common(1)[0][0]
    return text + "."


def seqrec_prompt(index: dict, history: Sequence[int], max_history: int = 20, template: str = "alpaca") -> str:
    """The evaluation prompt: the first seqrec prompt of the pool over the last `max_history` items."""
    pool = COMPACT_PROMPTS if template == "compact" else PROMPTS
    return TEMPLATES[template].format(instruction=pool["seqrec"][0].format(
        history=_spell(index, list(history)[-max_history:])))


def build_tasks(sequences: Sequence[Sequence[int]], index: dict, item_text: dict,
                tasks: Sequence[str] = TASKS, max_history: int = 20, seed: int = 0,
                template: str = "alpaca") -> list[tuple[str, str, str]]:
    """(task, prompt, response) examples of the given tasks.

    `sequences` are the users' training sequences (LC-Rec's train split: every prefix predicts its next
    item); item tasks run over every item of `index`. `template` names an entry of TEMPLATES.
    """
    unknown = [t for t in tasks if t not in PROMPTS]
    if unknown:
        raise ValueError(f"tasks: unknown {unknown}, choose from {list(TASKS)}")
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {list(TEMPLATES)}, got {template!r}")
    rng = random.Random(seed)
    out: list[tuple[str, str, str]] = []
    form = TEMPLATES[template]
    pool = COMPACT_PROMPTS if template == "compact" else PROMPTS

    def add(task: str, response: str, **fields) -> None:
        out.append((task, form.format(instruction=rng.choice(pool[task]).format(**fields)), response))

    for task in tasks:
        if task in ("item2index", "index2item"):
            for key in sorted(index, key=int):
                item, spelled = int(key), "".join(index[key])
                title = _title(item_text, item)
                desc = str((item_text.get(item) or {}).get("description", ""))[:200]
                if task == "item2index":
                    add(task, spelled, title=title, description=desc)
                else:
                    add(task, title, index=spelled)
            continue
        for seq in sequences:
            for t in range(1, len(seq)):
                history = _spell(index, seq[max(0, t - max_history):t])
                target = seq[t]
                if task == "seqrec":
                    add(task, "".join(index[str(target)]), history=history)
                elif task == "fusionseqrec":
                    add(task, _title(item_text, target), history=history)
                elif task == "itemsearch":
                    add(task, "".join(index[str(target)]), history=history, query=_query(item_text, target))
                elif task == "preferenceobtain" and t == len(seq) - 1:
                    add(task, _preference(item_text, seq[:t]), history=history)
    return out


class LCRecDataset(torch.utils.data.Dataset):
    """Tokenized examples: input_ids = prompt + response + EOS, labels = -100 on the prompt."""

    def __init__(self, examples: Sequence[tuple[str, str, str]], tokenizer, max_length: int = 512) -> None:
        self.rows = []
        for _, prompt, response in examples:
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids, labels = (p + r)[-max_length:], ([-100] * len(p) + r)[-max_length:]  # keep the response end
            self.rows.append({"input_ids": ids, "labels": labels})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


class LCRecCollator:
    """Pads a batch (right side for training) into input_ids, attention_mask, labels (-100 on padding)."""

    def __init__(self, tokenizer) -> None:
        self.pad = tokenizer.pad_token_id

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[j, :n] = torch.tensor(r["input_ids"])
            labels[j, :n] = torch.tensor(r["labels"])
            mask[j, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
