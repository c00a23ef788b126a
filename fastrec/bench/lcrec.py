"""Benchmark cases of the LC-Rec family.

generate(): a tiny Llama (hidden 128, 2 layers) with 10,000 items of 4-token indices, batch 8, 10 and 20
beams, in one run: unconstrained beam search, fastrec's exact trie constraint (ItemTrieLogitsProcessor),
`prefix_allowed_tokens_fn` over a Python dict trie, and LC-Rec's per-position token sets (also through
`prefix_allowed_tokens_fn`; not exact). Target: the trie constraint costs at most 5% over unconstrained.

RQ-VAE: one training epoch and the full index build on 4,344 items (the Scientific item count) with
fastrec's fused ops against the same model with the ops swapped for torch eager (the references).
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from unittest import mock

import torch

from fastrec.bench.core import Case


def _lm_setup(num_items: int = 10_000, levels: int = 4, codes: int = 256, seed: int = 0, hidden: int = 128,
              layers: int = 2, batch: int = 8, vocab: int | None = None):
    """A tiny Llama over a random semantic index, `batch` prompts, the trie processor. `vocab` pads the model's
    vocabulary (as real checkpoints do: 32,000 text tokens + the index tokens) beyond the tokenizer's."""
    from fastrec.data.semantic_index import index_tokens, token_of
    from fastrec.integrations.hf import ItemTrieLogitsProcessor, build_local_tokenizer
    from fastrec.recipes.lcrec import seqrec_prompt, tiny_llama

    rng = random.Random(seed)
    rows: set[tuple[int, ...]] = set()
    while len(rows) < num_items:
        rows.add(tuple(rng.randrange(codes) for _ in range(levels)))
    index = {str(i): [token_of(lv, c) for lv, c in enumerate(r)] for i, r in enumerate(sorted(rows))}
    texts = [seqrec_prompt(index, [rng.randrange(num_items) for _ in range(5)]) for _ in range(200)]
    tok = build_local_tokenizer(texts, vocab_size=1000, extra_tokens=index_tokens(levels, codes))
    model = tiny_llama(tok, hidden=hidden, layers=layers, seed=seed).eval()
    if vocab is not None and vocab > len(tok):
        model.resize_token_embeddings(vocab, mean_resizing=False)
    prompts = [seqrec_prompt(index, [rng.randrange(num_items) for _ in range(rng.randrange(3, 8))])
               for _ in range(batch)]
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {"index": index, "tok": tok, "model": model, "batch": batch, "levels": levels,
            "proc": ItemTrieLogitsProcessor(index, tok)}


def dict_trie_fn(index: dict, tok, prompt_len: int):
    """prefix_allowed_tokens_fn over a nested Python dict trie (the usual exact approach)."""
    vocab = tok.get_vocab()
    root: dict = {}
    for tokens in index.values():
        node = root
        for t in tokens:
            node = node.setdefault(vocab[t], {})
    eos = [tok.eos_token_id]

    def fn(batch_id: int, ids: torch.Tensor) -> list[int]:
        node = root
        for t in ids[prompt_len:].tolist():
            node = node.get(t)
            if node is None:
                return eos
        return list(node) or eos

    return fn


def lcrec_position_fn(index: dict, tok, prompt_len: int):
    """LC-Rec's constraint: the set of tokens seen at each position of any index (not a trie)."""
    vocab = tok.get_vocab()
    levels = len(next(iter(index.values())))
    allowed = [sorted({vocab[row[lv]] for row in index.values()}) for lv in range(levels)] + [[tok.eos_token_id]]

    def fn(batch_id: int, ids: torch.Tensor) -> list[int]:
        pos = ids.shape[-1] - prompt_len
        return allowed[min(pos, levels)]

    return fn


def _generate(s: dict, beams: int, processors=(), fn=None):
    with torch.no_grad():
        return s["model"].generate(**s["batch"], num_beams=beams, num_return_sequences=1, do_sample=False,
                                   max_new_tokens=s["levels"] + 1, logits_processor=list(processors),
                                   prefix_allowed_tokens_fn=fn, pad_token_id=s["tok"].pad_token_id,
                                   eos_token_id=s["tok"].eos_token_id)


def _rqvae_setup(n: int = 4344, dim: int = 384):
    from fastrec.nn.rqvae import RQVAE

    g = torch.Generator().manual_seed(0)
    # clustered embeddings, like sentence-encoder outputs of related products
    centers = torch.randn(64, dim, generator=g)
    x = centers[torch.randint(64, (n,), generator=g)] + 0.3 * torch.randn(n, dim, generator=g)
    torch.manual_seed(0)
    model = RQVAE(dim)
    model.train()
    model.quantizer.init_codebooks(model.encoder(x[:1024]).detach())
    return {"x": x, "model": model}


@contextmanager
def eager_ops():
    """Swap the fused ops used by fastrec.nn.rqvae / lcrec_index for their torch-eager references."""
    from fastrec import reference

    with mock.patch("fastrec.nn.rqvae.residual_encode", reference.residual_encode), \
            mock.patch("fastrec.nn.rqvae.nearest_code", reference.nearest_code), \
            mock.patch("fastrec.nn.rqvae.sinkhorn_assign", reference.sinkhorn_assign), \
            mock.patch("fastrec.recipes.lcrec_index.sinkhorn_assign", reference.sinkhorn_assign):
        yield


def _epoch(s: dict):
    from fastrec.recipes.lcrec_index import train_rqvae

    return train_rqvae(s["model"], s["x"], epochs=1, eval_every=10**9, progress=False)


def _index(s: dict):
    from fastrec.recipes.lcrec_index import build_index

    return build_index(s["model"], s["x"])


def _eager(fn):
    def run(s):
        with eager_ops():
            return fn(s)
    return run


def cases(quick: bool = False) -> list[Case]:
    out = []
    for beams in (10, 20):
        impls = {
            "fastrec": lambda s, b=beams: _generate(s, b, [s["proc"]]),
            "unconstrained": lambda s, b=beams: _generate(s, b),
            "prefix_allowed_tokens_fn dict trie": lambda s, b=beams: _generate(
                s, b, fn=dict_trie_fn(s["index"], s["tok"], s["batch"]["input_ids"].shape[1])),
            "LC-Rec per-position sets": lambda s, b=beams: _generate(
                s, b, fn=lcrec_position_fn(s["index"], s["tok"], s["batch"]["input_ids"].shape[1])),
        }
        # unconstrained ms / fastrec ms >= 1 / 1.05: the exact constraint costs at most 5%
        out.append(Case("lcrec generate", f"items=10,000 L=4 batch=8 beams={beams}", _lm_setup, impls,
                        targets={"unconstrained": round(1 / 1.05, 3)}, quick=beams == 10))
    out.append(Case("rqvae epoch", "N=4,344 in=384 L=4 K=256", _rqvae_setup,
                    {"fastrec": _epoch, "torch eager ops": _eager(_epoch)}, quick=False))
    out.append(Case("lcrec build_index", "N=4,344 in=384 L=4 K=256", _rqvae_setup,
                    {"fastrec": _index, "torch eager ops": _eager(_index)}, quick=False))
    return out
