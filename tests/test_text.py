"""text_embeddings: the offline encoder, pooling, batching order, padding, cache, bad input."""

import numpy as np
import pytest
import torch

from fastrec.data import item_texts, load_encoder, text_embeddings

TEXTS = ["cordless drill with two batteries", "glass beaker, 500 ml", "drill", "a digital multimeter for "
         "checking voltage, current and continuity on small electronics projects", "soldering iron kit"]


@pytest.fixture(scope="module")
def encoder():
    return load_encoder()


def test_matches_sentence_transformers(encoder):
    st = pytest.importorskip("sentence_transformers")
    from fastrec.data import default_encoder_path

    ref = st.SentenceTransformer(str(default_encoder_path()), device="cpu").encode(TEXTS, convert_to_tensor=True)
    mine = text_embeddings(TEXTS, *encoder, progress=False)
    cos = torch.nn.functional.cosine_similarity(mine, ref.float(), dim=1)
    assert torch.all(cos > 0.999)


def test_order_and_batching_do_not_change_rows(encoder):
    full = text_embeddings(TEXTS, *encoder, batch_size=64, progress=False)
    single = text_embeddings(TEXTS, *encoder, batch_size=1, progress=False)
    torch.testing.assert_close(full, single, rtol=1e-4, atol=1e-5)  # padding masked out
    perm = [3, 0, 4, 2, 1]
    permuted = text_embeddings([TEXTS[i] for i in perm], *encoder, batch_size=2, progress=False)
    torch.testing.assert_close(permuted, full[perm], rtol=1e-4, atol=1e-5)
    # related texts are closer than unrelated ones: the model is real
    sim = torch.nn.functional.cosine_similarity(full[0:1], full, dim=1)
    assert sim[2] > sim[1]


def test_last_token_pooling_finds_the_final_real_token(encoder):
    from fastrec.data.text import _pool

    hidden = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1)
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert _pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert _pool(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert _pool(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]
    # with the real model, a padded batch gives each text its own final-token state
    out = text_embeddings(TEXTS, *encoder, pooling="last", progress=False)
    alone = torch.cat([text_embeddings([t], *encoder, pooling="last", progress=False) for t in TEXTS])
    torch.testing.assert_close(out, alone, rtol=1e-4, atol=1e-5)


def test_cache_reuses_and_invalidates(tmp_path, encoder):
    cache = tmp_path / "emb.npy"
    first = text_embeddings(TEXTS, *encoder, cache=cache, progress=False)
    assert cache.exists()
    np.save(cache, np.zeros_like(first.numpy()))  # a read-back must return what the file holds
    assert torch.all(text_embeddings(TEXTS, *encoder, cache=cache, progress=False) == 0)
    changed = text_embeddings(TEXTS[:-1] + ["something else"], *encoder, cache=cache, progress=False)
    assert changed.abs().sum() > 0  # different texts: fingerprint differs, recomputed


def test_item_texts_from_lcrec_items():
    items = {"0": {"title": "Drill", "brand": "Acme", "categories": "Tools,Power", "description": ""},
             "1": {"title": "Beaker", "brand": "", "categories": "Glass", "description": "500 ml"}}
    assert item_texts(items) == ["title: Drill; brand: Acme; categories: Tools,Power",
                                 "title: Beaker; categories: Glass; description: 500 ml"]


def test_bad_input(encoder):
    with pytest.raises(ValueError, match="texts has 1 empty"):
        text_embeddings(["ok", "  "], *encoder, progress=False)
    with pytest.raises(TypeError, match="texts must be a sequence"):
        text_embeddings("one string", *encoder, progress=False)
    with pytest.raises(ValueError, match="pooling"):
        text_embeddings(["ok"], *encoder, pooling="max", progress=False)
    with pytest.raises(ValueError, match="tokenizer is required"):
        text_embeddings(["ok"], encoder[0], progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        text_embeddings(["ok"], "/nonexistent/model", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        text_embeddings(["ok"], *encoder, batch_size=0, progress=False)


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[EOS]", "[UNK]", "[CLS]"] + [w.strip(",") for t in TEXTS for w in t.split()]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]")


def _save_tiny(folder, kind, seed=0):
    """A tiny local model saved with save_pretrained (no download): a BERT encoder or a GPT-2 causal LM."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    tok = _tiny_tokenizer()
    torch.manual_seed(seed)
    if kind == "bert":
        model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=20, n_layer=1, n_head=2))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model.eval(), tok


@pytest.mark.parametrize("kind,dim", [("bert", 24), ("gpt2", 20)])
def test_any_local_folder_encoder_and_causal_lm_hidden_states(tmp_path, kind, dim):
    from fastrec.data.text import is_causal_lm

    model, tok = _save_tiny(tmp_path / kind, kind)
    out = text_embeddings(TEXTS, str(tmp_path / kind), batch_size=2, progress=False, device="cpu")
    assert out.shape == (len(TEXTS), dim)  # D = the model's hidden size
    loaded, _ = load_encoder(tmp_path / kind, device="cpu")
    assert is_causal_lm(loaded.config) == (kind == "gpt2")
    # by hand: mean over the real tokens of the last hidden state, one text at a time (no padding)
    base = model.transformer if kind == "gpt2" else model
    for i, text in enumerate(TEXTS):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            h = base(**enc).last_hidden_state[0]
        torch.testing.assert_close(out[i], h.mean(0), rtol=1e-4, atol=1e-5)
    # the loaded causal LM object (the generator itself) gives the same rows, without its logits
    torch.testing.assert_close(text_embeddings(TEXTS, model, tok, progress=False), out, rtol=1e-4, atol=1e-5)


def test_cache_is_keyed_by_the_encoder(tmp_path):
    cache = tmp_path / "emb.npy"
    _save_tiny(tmp_path / "enc", "bert", seed=0)
    first = text_embeddings(TEXTS, str(tmp_path / "enc"), cache=cache, progress=False, device="cpu")
    np.save(cache, np.zeros_like(first.numpy()))  # mark the cache file: a read-back returns zeros
    assert torch.all(text_embeddings(TEXTS, str(tmp_path / "enc"), cache=cache, progress=False, device="cpu") == 0)
    _save_tiny(tmp_path / "enc", "bert", seed=1)  # same folder, new weights: never the stale cache
    changed = text_embeddings(TEXTS, str(tmp_path / "enc"), cache=cache, progress=False, device="cpu")
    assert changed.abs().sum() > 0 and not torch.allclose(changed, first)
    np.save(cache, np.zeros_like(first.numpy()))
    other, tok = _save_tiny(tmp_path / "gpt", "gpt2")  # another model (a loaded object) at the same cache path
    assert text_embeddings(TEXTS, other, tok, cache=cache, progress=False).abs().sum() > 0
    with torch.no_grad():
        other.transformer.wte.weight.add_(1.0)  # same object, changed weights
    np.save(cache, np.zeros((len(TEXTS), 20), dtype=np.float32))
    assert text_embeddings(TEXTS, other, tok, cache=cache, progress=False).abs().sum() > 0
