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
