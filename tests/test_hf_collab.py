"""attach_collab_tokens on tiny Llama / Qwen2 / Mistral / GPT-2 models built from configs: logits equal a
hand-written eager splice, generate, peft LoRA, many slots per prompt, detach, and bad input."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fastrec.integrations.hf import (  # noqa: E402
    attach_collab_tokens,
    collab_embedding,
    detach_collab_tokens,
    word_tokenizer,
)
from fastrec.nn import HybridProjection  # noqa: E402

WORDS = ["The user's feature is . The target item's feature is , . Answer Yes No"]
PROMPT = "The user's feature is <User_ID> . The target item's feature is <Item_ID> , <Warm_ID> . Answer"


def tiny(kind: str, vocab: int):
    cfgs = {
        "llama": transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
        "qwen2": transformers.Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
        "mistral": transformers.MistralConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
        "gpt2": transformers.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4),
    }
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfgs[kind], attn_implementation="sdpa").eval()


def setup(kind: str):
    tok = word_tokenizer(WORDS)
    model = tiny(kind, len(tok))
    attach_collab_tokens(model, tok, projection=HybridProjection(32, user_dim=8, item_dim=8, warm_dim=16, mid=24))
    emb = collab_embedding(model)
    g = torch.Generator().manual_seed(1)
    emb.set_tables(user=torch.randn(5, 8, generator=g), item=torch.randn(7, 8, generator=g),
                   warm=torch.randn(7, 16, generator=g))
    return model, tok, emb


def eager_embeds(model, tok, emb, input_ids, collab):
    """The original code's splice: embed, then overwrite each placeholder sample by sample."""
    weight = emb.embedding.weight
    e = weight[input_ids].clone()
    for token, kind in zip(("<User_ID>", "<Item_ID>", "<Warm_ID>"), ("user", "item", "warm"), strict=True):
        pid = tok.convert_tokens_to_ids(token)
        rows = emb.projection(kind, emb.tables[kind][collab[kind]])
        k = 0
        for b in range(input_ids.shape[0]):
            for t in (input_ids[b] == pid).nonzero().flatten().tolist():
                e[b, t] = rows[k]
                k += 1
    return e


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral", "gpt2"])
def test_logits_equal_eager_splice(kind):
    model, tok, emb = setup(kind)
    enc = tok([PROMPT, "Answer " + PROMPT], return_tensors="pt", padding=True)
    collab = {"user": torch.tensor([1, 4]), "item": torch.tensor([0, 6]), "warm": torch.tensor([0, 6])}
    got = model(**enc, collab=collab).logits
    embeds = eager_embeds(model, tok, emb, enc["input_ids"], collab)
    want = model(inputs_embeds=embeds, attention_mask=enc["attention_mask"]).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the collab rows matter: other users give other logits
    other = model(**enc, collab={**collab, "user": torch.tensor([2, 3])}).logits
    assert (other - got).abs().max() > 1e-4


def test_generate_uses_the_collab_rows_and_detach_restores():
    model, tok, emb = setup("llama")
    enc = tok([PROMPT], return_tensors="pt")
    collab = {"user": torch.tensor([1]), "item": torch.tensor([2]), "warm": torch.tensor([2])}
    out = model.generate(**enc, collab=collab, max_new_tokens=4, do_sample=False, pad_token_id=0,
                         output_scores=True, return_dict_in_generate=True)
    embeds = eager_embeds(model, tok, emb, enc["input_ids"], collab)
    first = model(inputs_embeds=embeds, attention_mask=enc["attention_mask"]).logits[:, -1]
    ph = emb.placeholder_ids
    keep = torch.ones(first.shape[-1], dtype=torch.bool)
    keep[ph] = False
    torch.testing.assert_close(out.scores[0][:, keep], first[:, keep], rtol=1e-5, atol=1e-5)
    assert torch.isinf(out.scores[0][:, ph]).all()  # placeholders are never generated
    assert not torch.isin(out.sequences[:, enc["input_ids"].shape[1]:], ph).any()
    assert out.sequences.shape == (1, enc["input_ids"].shape[1] + 4)
    vocab = emb.embedding.weight.shape[0]
    detach_collab_tokens(model)
    assert isinstance(model.get_input_embeddings(), torch.nn.Embedding)
    assert model.get_input_embeddings().weight.shape[0] == vocab - 3
    plain = tok(["The user's feature is"], return_tensors="pt")
    assert model(**plain).logits.shape[-1] == vocab - 3


def test_peft_lora_wrapper_and_gradients_reach_the_projection():
    peft = pytest.importorskip("peft")
    model, tok, emb = setup("qwen2")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                      task_type="CAUSAL_LM"))
    for p in emb.projection.parameters():
        p.requires_grad_(True)
    enc = tok([PROMPT, PROMPT], return_tensors="pt")
    collab = {"user": torch.tensor([0, 1]), "item": torch.tensor([2, 3]), "warm": torch.tensor([2, 3])}
    out = lora(**enc, collab=collab, labels=enc["input_ids"])
    out.loss.backward()
    assert emb.projection.user[0].weight.grad.abs().sum() > 0
    assert emb.projection.warm.weight.grad.abs().sum() > 0
    lora_grads = [p.grad for n, p in lora.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    gen = lora.generate(**enc, collab=collab, max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert gen.shape[1] == enc["input_ids"].shape[1] + 2


def test_llara_style_one_slot_per_history_item():
    tok = word_tokenizer(WORDS)
    model = tiny("gpt2", len(tok))
    attach_collab_tokens(model, tok, tokens=["<His_ID>"], kinds=["item"],
                         projection=HybridProjection(32, user_dim=8, item_dim=8, warm_dim=0, mid=16))
    emb = collab_embedding(model)
    table = torch.randn(11, 8)
    emb.set_tables(item=table)
    text = "The user's feature is " + " , ".join(["<His_ID>"] * 10) + " ."
    enc = tok([text, text], return_tensors="pt")
    hist = torch.arange(20) % 11
    got = model(**enc, collab={"<His_ID>": hist}).logits
    e = emb.embedding.weight[enc["input_ids"]].clone()
    e[enc["input_ids"] == tok.convert_tokens_to_ids("<His_ID>")] = emb.projection("item", table[hist])
    torch.testing.assert_close(got, model(inputs_embeds=e).logits, rtol=1e-5, atol=1e-5)


def test_float_rows_and_moe_projection():
    tok = word_tokenizer(WORDS)
    model = tiny("llama", len(tok))
    proj = HybridProjection(32, user_dim=8, item_dim=8, warm_dim=16, mid=12, moe=True)
    attach_collab_tokens(model, tok, projection=proj)
    rows = {"user": torch.randn(1, 8), "item": torch.randn(1, 8), "warm": torch.randn(1, 16)}
    enc = tok([PROMPT], return_tensors="pt")
    got = model(**enc, collab=rows).logits
    e = model.get_input_embeddings().embedding.weight[enc["input_ids"]].clone()
    for token, kind in zip(("<User_ID>", "<Item_ID>", "<Warm_ID>"), ("user", "item", "warm"), strict=True):
        e[enc["input_ids"] == tok.convert_tokens_to_ids(token)] = proj(kind, rows[kind])
    torch.testing.assert_close(got, model(inputs_embeds=e).logits, rtol=1e-5, atol=1e-5)


def test_bad_input():
    model, tok, emb = setup("llama")
    enc = tok([PROMPT], return_tensors="pt")
    ok = {"user": torch.tensor([1]), "item": torch.tensor([2]), "warm": torch.tensor([2])}
    with pytest.raises(ValueError, match="no collab batch was given"):
        model(**enc)
    with pytest.raises(ValueError, match="no rows for <Warm_ID>"):
        model(**enc, collab={"user": ok["user"], "item": ok["item"]})
    with pytest.raises(IndexError, match="outside the rows of the user table"):
        model(**enc, collab={**ok, "user": torch.tensor([5])})
    with pytest.raises(ValueError, match="placeholder occurrences"):
        model(**enc, collab={**ok, "user": torch.tensor([1, 2])})
    with pytest.raises(ValueError, match="user rows are torch.float64"):
        model(**enc, collab={**ok, "user": torch.randn(1, 8, dtype=torch.float64)})
    emb.set_tables(item=torch.randn(7, 8).half())
    with pytest.raises(ValueError, match="item rows are torch.float16"):
        model(**enc, collab=ok)
    with pytest.raises(ValueError, match="already attached"):
        attach_collab_tokens(model, tok)
    plain = tiny("gpt2", len(tok))
    with pytest.raises(ValueError, match="no collab tokens attached"):
        detach_collab_tokens(plain)
