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
    with pytest.raises(ValueError, match="must be a 2-D float tensor"):
        emb.set_tables(item=torch.arange(7))
    with pytest.raises(ValueError, match="rows must be 2-D"):
        model(**enc, collab={**ok, "user": torch.randn(8)})
    emb.set_tables(item=torch.randn(7, 8).half())  # cast once to the projection's dtype
    assert emb.tables["item"].dtype == torch.float32
    with pytest.raises(ValueError, match="already attached"):
        attach_collab_tokens(model, tok)
    plain = tiny("gpt2", len(tok))
    with pytest.raises(ValueError, match="no collab tokens attached"):
        detach_collab_tokens(plain)


# ------------------------------------------------------------------ generate with collab tokens, every mode


def eager_generate_greedy(model, emb, tok, input_ids, mask, collab, steps):
    """Hand-written greedy decoding: every step splices the whole sequence eagerly and feeds inputs_embeds."""
    return greedy_loop(model, emb, lambda ids: eager_embeds(model, tok, emb, ids, collab), input_ids, mask,
                       steps)[:, input_ids.shape[1]:]


def greedy_loop(model, emb, embed, input_ids, mask, steps, pad=0):
    """Greedy decoding by hand: each step embeds the whole sequence with `embed`; rows that produced EOS
    go on with `pad`, as generate does."""
    ids, mask = input_ids.clone(), mask.clone()
    eos = model.generation_config.eos_token_id
    eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []))
    done = torch.zeros(ids.shape[0], 1, dtype=torch.bool)
    for _ in range(steps):
        logits = model(inputs_embeds=embed(ids), attention_mask=mask).logits[:, -1]
        logits[:, emb.placeholder_ids] = float("-inf")
        nxt = logits.argmax(-1, keepdim=True).masked_fill(done, pad)
        done |= torch.isin(nxt, eos)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids


def left_padded_batch(tok):
    tok.padding_side = "left"
    enc = tok([PROMPT, "Answer Yes No . " + PROMPT + " No", "Yes " + PROMPT], return_tensors="pt", padding=True)
    assert (enc["attention_mask"][:, 0] == 0).any()  # left padding is exercised
    collab = {"user": torch.tensor([1, 4, 0]), "item": torch.tensor([0, 6, 3]), "warm": torch.tensor([5, 6, 1])}
    return enc, collab


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_greedy_left_padding_with_and_without_cache(use_cache):
    model, tok, emb = setup("llama")
    enc, collab = left_padded_batch(tok)
    out = model.generate(**enc, collab=collab, max_new_tokens=5, do_sample=False, pad_token_id=0,
                         use_cache=use_cache)
    want = eager_generate_greedy(model, emb, tok, enc["input_ids"], enc["attention_mask"], collab, 5)
    assert torch.equal(out[:, enc["input_ids"].shape[1]:], want)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_beam_search_matches_inputs_embeds(kind, use_cache):
    model, tok, emb = setup(kind)
    enc, collab = left_padded_batch(tok)
    kw = dict(max_new_tokens=4, num_beams=4, num_return_sequences=2, do_sample=False, pad_token_id=0,
              output_scores=True, return_dict_in_generate=True)
    got = model.generate(**enc, collab=collab, use_cache=use_cache, **kw)
    embeds = eager_embeds(model, tok, emb, enc["input_ids"], collab)
    want = model.generate(inputs_embeds=embeds, attention_mask=enc["attention_mask"], **kw)
    assert got.sequences.shape[0] == 6
    assert torch.equal(got.sequences[:, enc["input_ids"].shape[1]:], want.sequences)
    torch.testing.assert_close(got.sequences_scores, want.sequences_scores, rtol=1e-4, atol=1e-5)


def test_generate_sampling_with_several_return_sequences():
    model, tok, emb = setup("llama")
    enc, collab = left_padded_batch(tok)
    kw = dict(max_new_tokens=4, do_sample=True, num_return_sequences=3, top_k=0, pad_token_id=0,
              output_scores=True, return_dict_in_generate=True)
    torch.manual_seed(5)
    got = model.generate(**enc, collab=collab, **kw)
    torch.manual_seed(5)
    embeds = eager_embeds(model, tok, emb, enc["input_ids"], collab)
    want = model.generate(inputs_embeds=embeds, attention_mask=enc["attention_mask"], **kw)
    assert torch.equal(got.sequences[:, enc["input_ids"].shape[1]:], want.sequences)
    # the first-step scores of the 3 copies of each prompt are that prompt's (rows followed the expansion)
    first = model(inputs_embeds=embeds, attention_mask=enc["attention_mask"]).logits[:, -1]
    keep = torch.ones(first.shape[-1], dtype=torch.bool)
    keep[emb.placeholder_ids] = False
    torch.testing.assert_close(got.scores[0][:, keep], first.repeat_interleave(3, 0)[:, keep], rtol=1e-5,
                               atol=1e-5)


def llara_setup():
    tok = word_tokenizer(WORDS)
    model = tiny("llama", len(tok))
    attach_collab_tokens(model, tok, tokens=["<His_ID>", "<User_ID>"], kinds=["item", "user"],
                         projection=HybridProjection(32, user_dim=8, item_dim=8, warm_dim=0, mid=16))
    emb = collab_embedding(model)
    g = torch.Generator().manual_seed(3)
    emb.set_tables(item=torch.randn(11, 8, generator=g), user=torch.randn(4, 8, generator=g))
    return model, tok, emb


def llara_eager(emb, tok, input_ids, collab):
    e = emb.embedding.weight[input_ids].clone()
    for token, kind in (("<His_ID>", "item"), ("<User_ID>", "user")):
        e[input_ids == tok.convert_tokens_to_ids(token)] = emb.projection(kind, emb.tables[kind][collab[token]])
    return e


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_prompts_with_different_numbers_of_slots(use_cache):
    """LLaRA-style: one <His_ID> per history item, 2, 5 and 1 of them; beams and return sequences."""
    model, tok, emb = llara_setup()
    tok.padding_side = "left"
    texts = ["The user's feature is <User_ID> . Answer " + " , ".join(["<His_ID>"] * n) + " ." for n in (2, 5, 1)]
    enc = tok(texts, return_tensors="pt", padding=True)
    collab = {"<His_ID>": torch.tensor([1, 2, 3, 4, 5, 6, 7, 10]), "<User_ID>": torch.tensor([0, 3, 1])}
    kw = dict(max_new_tokens=3, num_beams=3, num_return_sequences=2, do_sample=False, pad_token_id=0)
    got = model.generate(**enc, collab=collab, use_cache=use_cache, **kw)
    want = model.generate(inputs_embeds=llara_eager(emb, tok, enc["input_ids"], collab),
                          attention_mask=enc["attention_mask"], **kw)
    assert torch.equal(got[:, enc["input_ids"].shape[1]:], want)
    # greedy too, against the hand-written loop (no cache: the full prompt is re-spliced every step)
    greedy = model.generate(**enc, collab=collab, use_cache=use_cache, max_new_tokens=3, do_sample=False,
                            pad_token_id=0)
    want = greedy_loop(model, emb, lambda ids: llara_eager(emb, tok, ids, collab), enc["input_ids"],
                       enc["attention_mask"], 3)
    assert torch.equal(greedy, want)


def test_expansion_index_follows_repeat_interleave():
    from fastrec.nn.collab import expansion_index

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        b, t, e = int(torch.randint(1, 5, (1,), generator=g)), 6, int(torch.randint(1, 4, (1,), generator=g))
        prompts = torch.randint(0, 4, (b, t), generator=g)  # placeholder id 3, any count per prompt (0 too)
        n = int((prompts == 3).sum())
        rows = torch.arange(n) * 10
        want = torch.cat([rows[(prompts[:r] == 3).sum():(prompts[:r + 1] == 3).sum()]
                          for r in range(b) for _ in range(e)] + [rows[:0]])
        got = rows[expansion_index(prompts, 3, e, n)] if n else rows[:0]
        assert torch.equal(got, want)
        # and the expanded prompts take them in row-major order
        assert int((prompts.repeat_interleave(e, 0) == 3).sum()) == got.numel()


def test_bf16_model_with_fp32_tables_casts_once():
    model, tok, emb = setup("llama")
    model.to(torch.bfloat16)
    fp32 = {"user": torch.randn(5, 8), "item": torch.randn(7, 8), "warm": torch.randn(7, 16)}
    emb.set_tables(**fp32)
    assert all(t.dtype == torch.bfloat16 for t in emb.tables.values())
    enc = tok([PROMPT], return_tensors="pt")
    collab = {"user": torch.tensor([1]), "item": torch.tensor([2]), "warm": torch.tensor([2])}
    got = model(**enc, collab=collab).logits
    want = model(inputs_embeds=eager_embeds(model, tok, emb, enc["input_ids"], collab)).logits
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    trainable = torch.randn(5, 8, requires_grad=True)
    with pytest.raises(ValueError, match="a cast copy would not train"):
        emb.set_tables(user=trainable)


def test_uses_the_fused_collab_inputs_embeds_op(monkeypatch):
    from fastrec.ops import collab as ops

    model, tok, emb = setup("llama")
    calls = []
    real = ops.collab_inputs_embeds

    def spy(*args, **kwargs):
        calls.append(kwargs.get("validate"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "collab_inputs_embeds", spy)
    enc = tok([PROMPT], return_tensors="pt")
    collab = {"user": torch.tensor([1]), "item": torch.tensor([2]), "warm": torch.tensor([2])}
    got = model(**enc, collab=collab).logits
    assert calls == [True]
    emb.validate = False
    torch.testing.assert_close(model(**enc, collab=collab).logits, got)
    assert calls == [True, False]  # validate=False reaches the op (no host sync on a GPU)
    want = model(inputs_embeds=eager_embeds(model, tok, emb, enc["input_ids"], collab)).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
def test_no_host_sync_with_validate_off_on_cuda(cuda_device, cuda_syncs_raise):
    """validate=False: a forward with collab rows never syncs the host (CUDA sync debug mode raises if it does)."""
    model, tok, emb = setup("llama")
    model.to(cuda_device)
    emb.set_tables(**{k: v.to(cuda_device) for k, v in emb.tables.items()})
    emb.validate = False
    enc = tok([PROMPT], return_tensors="pt").to(cuda_device)
    collab = {k: torch.tensor([2], device=cuda_device) for k in ("user", "item", "warm")}
    model(**enc, collab=collab)  # warm-up (lazy init may sync)
    with cuda_syncs_raise():
        with torch.no_grad():
            with emb.use(collab):
                emb(enc["input_ids"])


def test_torch_compile_fullgraph_forward():
    model, tok, emb = setup("llama")
    emb.validate = False
    enc = tok([PROMPT, PROMPT], return_tensors="pt")
    collab = {"user": torch.tensor([1, 2]), "item": torch.tensor([2, 3]), "warm": torch.tensor([2, 4])}
    want = model(**enc, collab=collab).logits
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # no graph break anywhere
    got = compiled(**enc, collab=collab).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    other = compiled(**enc, collab={**collab, "user": torch.tensor([3, 4])}).logits
    assert (other - got).abs().max() > 1e-4  # the rows are inputs of the compiled graph, not constants
