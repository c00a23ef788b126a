"""Glue to other libraries (Hugging Face transformers, peft)."""

from fastrec.integrations.hf import attach_collab_tokens, collab_embedding, detach_collab_tokens

__all__ = ["attach_collab_tokens", "collab_embedding", "detach_collab_tokens"]
from fastrec.integrations.hf import ItemTrieLogitsProcessor, build_local_tokenizer

__all__ += ["ItemTrieLogitsProcessor", "build_local_tokenizer"]
