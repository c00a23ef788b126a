"""Hugging Face glue: collaborative tokens in any causal LM, spliced by one fused op.

    model = attach_collab_tokens(model, tokenizer, projection=HybridProjection(model.config.hidden_size))
    model.get_input_embeddings().set_tables(user=mf_users, item=mf_items, warm=item_text_vectors)
    out = model(input_ids=ids, attention_mask=mask, collab={"user": u, "item": i, "warm": i})
    gen = model.generate(input_ids=ids, attention_mask=mask, collab=..., max_new_tokens=2)
    detach_collab_tokens(model)

Works for any model whose forward looks its input embeddings up through `get_input_embeddings()` (Llama,
Qwen2, Mistral, GPT-2, ...), with any attention implementation, before or after a peft wrapper.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fastrec.nn.collab import KINDS, CollabTokenEmbedding, HybridProjection

DEFAULT_TOKENS = ("<User_ID>", "<Item_ID>", "<Warm_ID>")
_STATE = "_fastrec_collab"


def _base(model: nn.Module) -> nn.Module:
    """The transformers model under peft wrappers (whose methods we patch)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def attach_collab_tokens(model: nn.Module, tokenizer: Any, tokens: Sequence[str] = DEFAULT_TOKENS,
                         kinds: Sequence[str] | None = None, projection: HybridProjection | None = None,
                         tables: Mapping[str, torch.Tensor] | None = None, user_dim: int = 256,
                         item_dim: int = 256, warm_dim: int | None = None) -> nn.Module:
    """Add the placeholder tokens, resize the embeddings, and route the input embeddings through the splice.

    Args:
        model: a transformers causal LM (or a peft model around one); modified in place and returned.
        tokenizer: its tokenizer; the tokens are added as special tokens.
        tokens: placeholder strings, one per slot type.
        kinds: the projection kind of each token ("user", "item", "warm"); default: KINDS in order.
        projection: the HybridProjection to use; default: a new one with the model's hidden size, in the
            embedding's dtype and device.
        tables: collaborative tables by kind (see CollabTokenEmbedding.set_tables).

    After this, ``model(input_ids=..., collab=...)`` and ``model.generate(input_ids=..., collab=...)`` fill
    the placeholders; collab maps a kind or token to ids [N_s] or rows [N_s, d].
    """
    base = _base(model)
    if hasattr(base, _STATE):
        raise ValueError("collab tokens are already attached to this model (detach_collab_tokens first)")
    tokens = list(tokens)
    kinds = list(kinds) if kinds is not None else list(KINDS[: len(tokens)])
    if len(kinds) != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but {len(kinds)} kinds")
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"tokens must be distinct: {tokens}")
    old_vocab = base.get_input_embeddings().weight.shape[0]
    tokenizer.add_tokens(tokens, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if len(tokenizer) > old_vocab:
        base.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the rows are replaced anyway
    embedding = base.get_input_embeddings()
    weight = embedding.weight
    if projection is None:
        projection = HybridProjection(weight.shape[1], user_dim, item_dim, warm_dim)
        projection.to(device=weight.device, dtype=weight.dtype)
    collab_emb = CollabTokenEmbedding(embedding, ids, kinds, projection, tokens).to(weight.device)
    if tables:
        collab_emb.set_tables(**tables)
    base.set_input_embeddings(collab_emb)
    _patch(base, collab_emb, old_vocab)
    return model


def _patch(base: nn.Module, emb: CollabTokenEmbedding, old_vocab: int) -> None:
    forward, generate = base.forward, base.generate

    @functools.wraps(forward)
    def collab_forward(*args: Any, collab: Mapping[str, torch.Tensor] | None = None, **kwargs: Any) -> Any:
        if collab is None:  # inside generate the rows were set by collab_generate
            return forward(*args, **kwargs)
        with emb.use(collab):
            return forward(*args, **kwargs)

    @functools.wraps(generate)
    def collab_generate(*args: Any, collab: Mapping[str, torch.Tensor] | None = None, **kwargs: Any) -> Any:
        # placeholders are input-only: never generate one (it would have no collaborative row to take)
        kwargs["suppress_tokens"] = list(kwargs.get("suppress_tokens") or []) + emb.placeholder_ids.tolist()
        with emb.use(collab, once=True):  # the prompt (prefill) holds every placeholder
            return generate(*args, **kwargs)

    base.forward, base.generate = collab_forward, collab_generate
    setattr(base, _STATE, {"embedding": emb.embedding, "old_vocab": old_vocab})


def detach_collab_tokens(model: nn.Module, shrink: bool = True) -> nn.Module:
    """Undo attach_collab_tokens: the original embedding module, forward and generate come back.

    With ``shrink`` the embedding table returns to its original vocabulary size (the tokenizer keeps the
    added tokens; ids past the old vocabulary are then invalid). Returns the projection-free model.
    """
    base = _base(model)
    state = getattr(base, _STATE, None)
    if state is None:
        raise ValueError("this model has no collab tokens attached")
    del base.forward, base.generate  # the instance attributes shadowed the class methods
    base.set_input_embeddings(state["embedding"])
    if shrink and state["embedding"].weight.shape[0] != state["old_vocab"]:
        base.resize_token_embeddings(state["old_vocab"])
    delattr(base, _STATE)
    return model


def collab_embedding(model: nn.Module) -> CollabTokenEmbedding:
    """The CollabTokenEmbedding of an attached model (tables, projection, placeholder ids)."""
    emb = _base(model).get_input_embeddings()
    if not isinstance(emb, CollabTokenEmbedding):
        raise ValueError("this model has no collab tokens attached")
    return emb


def word_tokenizer(texts: Sequence[str], extra: Sequence[str] = (), lowercase: bool = False) -> Any:
    """A small word-level fast tokenizer built locally from `texts` (the project's own; no download).

    Words and punctuation of every text become tokens, plus <pad>, <unk>, <s>, </s> and `extra`.
    Returns a transformers PreTrainedTokenizerFast with pad/unk/bos/eos set.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    norm = normalizers.Lowercase() if lowercase else None
    vocab: dict[str, int] = {t: i for i, t in enumerate(specials)}
    for text in list(texts) + list(extra):
        text = norm.normalize_str(text) if norm else text
        for word, _ in pre.pre_tokenize_str(text):
            vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    if norm:
        tok.normalizer = norm
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")
