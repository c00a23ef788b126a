"""Hugging Face glue: collaborative tokens in any causal LM, spliced by one fused op.

    model = attach_collab_tokens(model, tokenizer, projection=HybridProjection(model.config.hidden_size))
    model.get_input_embeddings().set_tables(user=mf_users, item=mf_items, warm=item_text_vectors)
    out = model(input_ids=ids, attention_mask=mask, collab={"user": u, "item": i, "warm": i})
    gen = model.generate(input_ids=ids, attention_mask=mask, collab=..., max_new_tokens=2)
    detach_collab_tokens(model)

`generate` works in every mode: greedy, beam search, sampling, num_return_sequences > 1 (the rows follow the
batch expansion prompt by prompt, whatever number of slots each prompt holds), use_cache=False (every full
re-feed splices the prompt again) and left padding. Placeholders are never generated.

Works for any model whose forward looks its input embeddings up through `get_input_embeddings()` (Llama,
Qwen2, Mistral, GPT-2, ...), with any attention implementation, before or after a peft wrapper.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fastrec.nn.collab import KINDS, CollabTokenEmbedding, HybridProjection
from fastrec.ops.trie import build_trie, check_trie

DEFAULT_TOKENS = ("<User_ID>", "<Item_ID>", "<Warm_ID>")
_STATE = "_fastrec_collab"


def _base(model: nn.Module) -> nn.Module:
    """The transformers model under peft wrappers (whose methods we patch)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def attach_collab_tokens(model: nn.Module, tokenizer: Any, tokens: Sequence[str] = DEFAULT_TOKENS,
                         kinds: Sequence[str] | None = None, projection: HybridProjection | None = None,
                         tables: Mapping[str, torch.Tensor] | None = None, user_dim: int = 256,
                         item_dim: int = 256, warm_dim: int | None = None, validate: bool = True) -> nn.Module:
    """Add the placeholder tokens, resize the embeddings, and route the input embeddings through the splice.

    Args:
        model: a transformers causal LM (or a peft model around one); modified in place and returned.
        tokenizer: its tokenizer; the tokens are added as special tokens.
        tokens: placeholder strings, one per slot type.
        kinds: the projection kind of each token ("user", "item", "warm"); default: KINDS in order.
        projection: the HybridProjection to use; default: a new one with the model's hidden size, in the
            embedding's dtype and device.
        tables: collaborative tables by kind (see CollabTokenEmbedding.set_tables).
        validate: check ids and placeholder counts on every call (a host sync each on a GPU; see
            CollabTokenEmbedding).

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
    collab_emb = CollabTokenEmbedding(embedding, ids, kinds, projection, tokens, validate).to(weight.device)
    if tables:
        collab_emb.set_tables(**tables)
    base.set_input_embeddings(collab_emb)
    _patch(base, collab_emb, old_vocab)
    return model


def _prompt_ids(args: tuple, kwargs: dict) -> torch.Tensor | None:
    ids = kwargs.get("input_ids", kwargs.get("inputs"))
    if ids is None and args and isinstance(args[0], torch.Tensor):
        ids = args[0]
    return ids


def _patch(base: nn.Module, emb: CollabTokenEmbedding, old_vocab: int) -> None:
    forward, generate = base.forward, base.generate

    @functools.wraps(forward)
    def collab_forward(*args: Any, collab: Mapping[str, torch.Tensor] | None = None, **kwargs: Any) -> Any:
        if collab is None:  # inside generate the rows were set by collab_generate
            return forward(*args, **kwargs)
        previous = emb._enter(collab, "all")  # not a context manager: torch.compile traces this plainly
        try:
            return forward(*args, **kwargs)
        finally:
            emb._exit(previous)

    @functools.wraps(generate)
    def collab_generate(*args: Any, collab: Mapping[str, torch.Tensor] | None = None, **kwargs: Any) -> Any:
        # placeholders are input-only: never generate one (it would have no collaborative row to take)
        kwargs["suppress_tokens"] = list(kwargs.get("suppress_tokens") or []) + emb.placeholder_ids.tolist()
        if collab is None:
            return generate(*args, **kwargs)
        prompt = _prompt_ids(args, kwargs)
        if prompt is None:
            raise ValueError("generate(..., collab=...) needs the prompt as input_ids (not inputs_embeds)")
        with emb.generating(collab, prompt):  # rows follow beams / num_return_sequences, every full re-feed
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

# ------------------------------------------------------------------------------- LC-Rec: trie-constrained
# Hugging Face glue for LC-Rec: exact trie-constrained generation of item indices, and a local tokenizer.
#
#     processor = ItemTrieLogitsProcessor(index, tokenizer)   # index: {"0": ["<a_1>", "<b_2>", ...], ...}
#     out = model.generate(**batch, num_beams=20, num_return_sequences=20, max_new_tokens=levels + 1,
#                          logits_processor=[processor])
#     items = processor.decode(out)                           # [[item ids of each sequence], ...]
#
# The trie of every item index is built once, flattened to CSR and kept on each device it is used on. At
# every step the state of each beam is derived from the tokens that beam generated (`fastrec.ops.trie_mask`),
# so it stays right under beam reordering, left padding, batch > 1 and any beam count. Every finished
# sequence spells an existing item; `decode` maps it back (an index shared by several items maps to all).

try:
    from transformers import LogitsProcessor
except ImportError:  # pragma: no cover - transformers is a dependency
    LogitsProcessor = object

# A token id no vocabulary reaches (2^31 - 1 fits int32 and int64 input_ids). The processor's device copies of
# the trie give the root one more edge, on this id, back to the root, so writing it over a row's generated
# tokens walks that row to the root: a new generation's mask from the same single trie_mask call, chosen on
# the device. trie_mask writes only tokens inside [0, V), so this edge never shows in a mask.
RESTART_TOKEN = 2**31 - 1


def with_restart_edge(indptr: torch.Tensor, tokens: torch.Tensor,
                      children: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CSR trie with a root edge reading RESTART_TOKEN back to the root (last of the root's sorted edges)."""
    end = int(indptr[1])
    tokens = torch.cat([tokens[:end], tokens.new_tensor([RESTART_TOKEN]), tokens[end:]])
    children = torch.cat([children[:end], children.new_zeros(1), children[end:]])
    return torch.cat([indptr[:1], indptr[1:] + 1]), tokens, children


class ItemTrieLogitsProcessor(LogitsProcessor):
    """Only let generation spell existing item indices (then EOS/pad), exactly.

    Args:
        index: LC-Rec index dict, item id -> list of index tokens (duplicates allowed: one index may name
            several items, all of which `decode` returns).
        tokenizer: a tokenizer that knows every index token (see `add_index_tokens`).
        end_token_ids: tokens that may follow a complete index (default: the tokenizer's EOS).
        pad_token_ids: tokens a finished row may go on with (default: the tokenizer's pad).
        fill: score given to disallowed tokens.
        device_check: how a call tells a continuing generation from a new one with the same shape: on the
            device, without a host sync (True; the device's answer restarts the rows' trie walk at the root
            when the prompt changed, still one mask a step), or by a host comparison (False; a sync on a
            GPU). Default: on the device for tensors off the CPU (where a sync would stall the next step's
            launches), on the host for CPU tensors (where the compare costs nothing).
    """

    def __init__(self, index: dict, tokenizer, end_token_ids: Iterable[int] | None = None,
                 pad_token_ids: Iterable[int] | None = None, fill: float = float("-inf"),
                 device_check: bool | None = None) -> None:
        if not isinstance(index, dict) or not index:
            raise ValueError("index must be a non-empty dict {item_id: [index tokens]}")
        if device_check is not None and not isinstance(device_check, bool):
            raise ValueError(f"device_check must be True, False or None, got {device_check!r}")
        self.device_check = device_check
        self.fill = float(fill)
        self.items_of: dict[tuple[int, ...], list[int]] = {}
        vocab = tokenizer.get_vocab()
        for item, tokens in sorted(index.items(), key=lambda kv: int(kv[0])):
            if not isinstance(tokens, (list, tuple)) or not tokens:
                raise ValueError(f"index: item {item} must map to a non-empty list of tokens")
            missing = [t for t in tokens if t not in vocab]
            if missing:
                raise ValueError(f"index: item {item} uses tokens the tokenizer does not know: {missing[:3]} "
                                 "(add them with fastrec.recipes.lcrec.add_index_tokens)")
            self.items_of.setdefault(tuple(vocab[t] for t in tokens), []).append(int(item))
        if end_token_ids is None:
            end_token_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        if pad_token_ids is None:
            pad_token_ids = [tokenizer.pad_token_id] if tokenizer.pad_token_id is not None else []
        self.end_token_ids = sorted({int(t) for t in end_token_ids})
        self.pad_token_ids = sorted({int(t) for t in pad_token_ids})
        if not self.end_token_ids:
            raise ValueError("end_token_ids: the tokenizer has no EOS token; pass end_token_ids")
        self.levels = max(len(s) for s in self.items_of)
        self.trie = build_trie(list(self.items_of), self.end_token_ids, self.pad_token_ids)
        check_trie(*self.trie)
        self._on_device: dict[tuple[str, int], tuple[torch.Tensor, ...]] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the prompt; the next call starts a new generation (detected automatically otherwise)."""
        self._prompt: torch.Tensor | None = None
        self._last_len = -1
        # the previous call's "new generation after all?" flag, still on its way to the host:
        # (flag, event or None, that call's input_ids)
        self._pending: tuple[torch.Tensor, object, torch.Tensor] | None = None

    def _trie(self, device: torch.device, vocab_size: int) -> tuple[torch.Tensor, ...]:
        key = (str(device), vocab_size)
        if key not in self._on_device:
            top = int(self.trie[1].max())
            if top >= vocab_size:
                raise ValueError(f"the index uses token id {top} but the model scores only "
                                 f"{vocab_size} tokens (resize the embeddings after adding index tokens)")
            if vocab_size >= RESTART_TOKEN:
                raise ValueError(f"the model scores {vocab_size} tokens; at most {RESTART_TOKEN - 1} are supported")
            self._on_device[key] = tuple(t.to(device) for t in with_restart_edge(*self.trie))
        return self._on_device[key]

    def _may_continue(self, input_ids: torch.Tensor) -> bool:
        """Whether `input_ids` can continue the current generation: one token longer than the previous call,
        same batch and device (its prompt part is checked on the device)."""
        prompt = self._prompt
        return (prompt is not None and input_ids.shape[1] == self._last_len + 1
                and prompt.shape[0] == input_ids.shape[0] and prompt.device == input_ids.device)

    def _resolve(self) -> None:
        """Applies the previous call's device check: if its prompt part had changed, that call started a new
        generation whose prompt was all of its input_ids. By now the flag is on the host (the generation loop
        waits on the device every step), so this read does not hold the device's queue up."""
        if self._pending is None:
            return
        flag, event, ids = self._pending
        self._pending = None
        if event is not None and not event.query():
            event.synchronize()  # only when the device is more than a step behind
        if bool(flag.numpy()):
            self._prompt = ids.detach().clone()

    def prompt_length(self, input_ids: torch.Tensor) -> int:
        """Length of the prompt (left padding included) of the generation `input_ids` belongs to.

        A call continues the current generation when it is exactly one token longer than the previous
        call and its prompt part is unchanged (rows of a batch item share one prompt, so beam reordering
        keeps it equal); anything else starts a new generation. (This one compares on the host; the
        processor's own calls compare on the device, see __call__.)
        """
        self._resolve()
        same = self._may_continue(input_ids) and torch.equal(input_ids[:, : self._prompt.shape[1]], self._prompt)
        if not same:
            self._prompt = input_ids.detach().clone()
        self._last_len = input_ids.shape[1]
        return self._prompt.shape[1]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Masks `scores` to the tokens that keep each row on an item's index. With the device check (off the
        CPU by default) there is no host sync: the prompt check of a continuing generation runs on the
        device, and where the prompt changed it overwrites the rows' generated tokens with RESTART_TOKEN,
        whose edge keeps the trie walk at the root (a fresh generation's mask); the host learns that
        answer at the next call."""
        self._resolve()
        trie = self._trie(scores.device, scores.shape[1])
        cur = input_ids.shape[1]
        on_device = self.device_check if self.device_check is not None else input_ids.device.type != "cpu"
        if not on_device:
            generated = input_ids[:, self.prompt_length(input_ids):]
            return torch.ops.fastrec.trie_mask(scores, generated, *trie, self.fill)
        if not self._may_continue(input_ids):
            self._prompt, self._last_len = input_ids.detach().clone(), cur
            return torch.ops.fastrec.trie_mask(scores, input_ids[:, cur:], *trie, self.fill)
        self._last_len = cur
        p = self._prompt.shape[1]
        new = (input_ids[:, :p] != self._prompt).any()
        generated = input_ids[:, p:].masked_fill(new, RESTART_TOKEN)  # [R, a few]: the only extra pass
        self._pending = (*self._flag_to_host(new), input_ids.detach().clone())  # the caller may reuse its buffer
        return torch.ops.fastrec.trie_mask(scores, generated, *trie, self.fill)

    @staticmethod
    def _flag_to_host(flag: torch.Tensor) -> tuple[torch.Tensor, object]:
        """(a host copy of a 0-d bool, the CUDA event after which it is valid, or None when it already is)."""
        if flag.device.type != "cuda":
            return flag.cpu(), None  # the CPU: no copy; other devices: a plain (waiting) copy
        host = torch.empty((), dtype=torch.bool, pin_memory=True)
        host.copy_(flag, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event

    def items(self, generated: Sequence[int]) -> list[int]:
        """Items spelled by one generated token sequence (end tokens after the index are ignored); [] if none."""
        seq = [int(t) for t in generated]
        while seq and (seq[-1] in self.end_token_ids or seq[-1] in self.pad_token_ids):
            seq.pop()
        return list(self.items_of.get(tuple(seq), []))

    def decode(self, sequences: torch.Tensor, prompt_length: int | None = None) -> list[list[int]]:
        """Items of every row of `generate`'s output (prompt included, or pass `prompt_length`)."""
        self._resolve()
        start = self._prompt.shape[1] if prompt_length is None and self._prompt is not None else prompt_length or 0
        return [self.items(row) for row in sequences[:, start:].tolist()]


def build_local_tokenizer(texts: Iterable[str], vocab_size: int = 2000, extra_tokens: Sequence[str] = ()):
    """A small word-piece tokenizer trained here on `texts` with the `tokenizers` library (nothing is
    downloaded), wrapped as a `PreTrainedTokenizerFast` with <unk>, <s>, </s> and <pad>; left padding."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(list(texts), trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", padding_side="left")
    if extra_tokens:
        fast.add_tokens(list(extra_tokens))
    return fast
