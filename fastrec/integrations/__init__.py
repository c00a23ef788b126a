from fastrec.integrations.hf import ItemTrieLogitsProcessor, build_local_tokenizer

__all__ = ["ItemTrieLogitsProcessor", "build_local_tokenizer"]
