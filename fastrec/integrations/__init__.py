"""Glue to other libraries (Hugging Face transformers, peft)."""

from fastrec.integrations.hf import (
    ItemTrieLogitsProcessor,
    attach_collab_tokens,
    build_local_tokenizer,
    collab_embedding,
    detach_collab_tokens,
)

__all__ = ["ItemTrieLogitsProcessor", "attach_collab_tokens", "build_local_tokenizer", "collab_embedding",
           "detach_collab_tokens"]
