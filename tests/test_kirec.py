"""SemanticFusionEmbedding, SASRec and the KIRec recipe (extraction, embeddings, training pairs, ranking)."""

import json

import pytest
import torch

from fastrec.data import leave_one_out, synthetic
from fastrec.nn import IDEmbedding, SASRec, SemanticFusionEmbedding, reduction_init
from fastrec.ops import semantic_fusion_lookup
from fastrec.recipes import kirec


def test_reduction_init_pca_and_whitening():
    x = torch.randn(500, 30) @ torch.randn(30, 30) + 3.0
    w, b = reduction_init(x, 8, "whiten", scale=0.5)
    s = x @ w.t() + b
    torch.testing.assert_close(s.mean(0), torch.zeros(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cov(s.t()), 0.25 * torch.eye(8), atol=1e-4, rtol=1e-3)
    w, b = reduction_init(x, 8, "pca", scale=0.5)
    s = x @ w.t() + b
    var = s.var(0)
    assert torch.all(var[:-1] >= var[1:] - 1e-5), "PCA components come in decreasing variance"
    torch.testing.assert_close(var.mean(), torch.tensor(0.25), atol=1e-4, rtol=1e-3)
    cov = torch.cov(s.t())
    assert (cov - torch.diag(torch.diag(cov))).abs().max() < 1e-4
    with pytest.raises(ValueError, match="principal components"):
        reduction_init(torch.randn(5, 30), 8)
    with pytest.raises(ValueError, match="init must be"):
        reduction_init(x, 8, "svd")


@pytest.mark.parametrize("mode", ["add", "gate", "concat"])
def test_semantic_fusion_embedding(mode):
    sem = torch.randn(50, 24)
    emb = SemanticFusionEmbedding(sem, 8, mode=mode, padding_idx=0)
    ids = torch.randint(0, 50, (4, 6))
    out = emb(ids)
    want = semantic_fusion_lookup(ids, emb.id_embedding.weight, emb.semantic, emb.weight, emb.bias, mode,
                                  emb.fuse_weight, emb.fuse_bias, padding_idx=0)
    torch.testing.assert_close(out, want)
    assert torch.all(out[ids == 0] == 0)
    torch.testing.assert_close(emb.table()[ids], out, rtol=1e-5, atol=1e-6)
    if mode == "concat":  # initialised as the sum
        add = SemanticFusionEmbedding(sem, 8, mode="add", padding_idx=0)
        add.load_state_dict({k: v for k, v in emb.state_dict().items() if not k.startswith("fuse")})
        torch.testing.assert_close(add(ids), out, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert emb.weight.grad is not None and emb.id_embedding.weight.grad is not None
    assert torch.all(emb.id_embedding.weight.grad[0] == 0)


def test_table_cache_in_eval_mode_follows_parameter_updates():
    emb = SemanticFusionEmbedding(torch.randn(30, 16), 8, mode="gate").eval()
    with torch.no_grad():
        first = emb.table()
        assert emb.table() is first  # cached
        emb.weight.add_(1.0)
        second = emb.table()
    assert second is not first and not torch.allclose(first, second)


def test_semantic_fusion_embedding_bad_input():
    sem = torch.randn(10, 6)
    sem[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf in rows \[3\]"):
        SemanticFusionEmbedding(sem, 4)
    sem[3, 1] = 0.0
    with pytest.raises(ValueError, match="mode must be"):
        SemanticFusionEmbedding(sem, 4, mode="mul")
    with pytest.raises(ValueError, match="2-D floating-point"):
        SemanticFusionEmbedding(torch.ones(10, 6, dtype=torch.int64), 4)
    with pytest.raises(IndexError, match="out of range"):
        SemanticFusionEmbedding(sem, 4)(torch.tensor([[1, 10]]))


@pytest.mark.parametrize("fusion", [False, True])
def test_sasrec_causal_and_padding_invariant(fusion):
    emb = SemanticFusionEmbedding(torch.randn(40, 16), 16, mode="gate") if fusion else None
    model = SASRec(40, d=16, max_len=10, item_embedding=emb).eval()
    seqs = torch.tensor([[0, 0, 0, 5, 7, 9], [1, 2, 3, 4, 5, 6]])
    h = model.encode(seqs)
    changed = seqs.clone()
    changed[:, -1] = 11
    torch.testing.assert_close(model.encode(changed)[:, :-1], h[:, :-1])  # the future is not seen
    longer = torch.cat([torch.zeros(2, 4, dtype=torch.int64), seqs], 1)  # more left padding
    torch.testing.assert_close(model(longer)[0], model(seqs)[0], rtol=1e-4, atol=1e-5)
    scores = model.scores(seqs)
    assert scores.shape == (2, 40) and torch.all(scores[:, 0] == float("-inf"))
    with pytest.raises(ValueError, match="L <= 10"):
        model(torch.ones(2, 11, dtype=torch.int64))


def test_sasrec_learns_a_fixed_successor():
    torch.manual_seed(0)
    model = SASRec(20, d=16, max_len=5, dropout=0.0, item_embedding=IDEmbedding(20, 16))
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    seqs = torch.randint(1, 20, (32, 5))
    targets = seqs % 19 + 1  # the next item is a fixed function of the current one
    with torch.no_grad():
        first = float(model.loss(seqs, targets))
    for _ in range(80):
        loss = model.loss(seqs, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.3 * first
    assert (model.scores(seqs).argmax(1) == targets[:, -1]).float().mean() >= 0.9


def test_structured_attributes_fallback_is_deterministic_and_labelled(tmp_path):
    text = {0: {"title": "Beaker <b>500 ml</b>", "brand": "Pyrex", "categories": "Lab > Glass", "description": ""},
            1: {}}
    recs = kirec.extract_attributes(text, 2, cache=tmp_path / "a.jsonl")
    assert recs[0]["source"] == kirec.FALLBACK
    assert recs[0]["attributes"] == "brand: Pyrex\ncategory: Lab > Glass\ntitle: Beaker 500 ml"
    assert recs[1]["attributes"] == ""  # no text: empty, handled by the embedding step
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert [json.loads(line)["item"] for line in lines] == [0, 1]


def _tiny_causal_lm():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[EOS]", "[UNK]"] + "list the attributes of this product as key value lines brand category " \
        "material function audience and any other useful attribute title description beaker glass".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(fast), n_positions=256, n_embd=16, n_layer=1, n_head=2)).eval()
    return model, fast


def test_llm_extraction_batched_and_cached(tmp_path):
    model, tok = _tiny_causal_lm()
    text = {i: {"title": "glass beaker", "description": "lab glass " * i} for i in range(5)}
    recs = kirec.extract_attributes(text, 5, cache=tmp_path / "c.jsonl", model=model, tokenizer=tok,
                                    model_name="tiny", batch_size=2, max_new_tokens=4)
    assert {r["source"] for r in recs.values()} == {"llm:tiny"}
    assert all(r["attributes"] for r in recs.values())  # an untrained LM still emits 4 tokens
    cached = kirec.extract_attributes(text, 5, cache=tmp_path / "c.jsonl", model=object(), tokenizer=None,
                                      model_name="tiny")  # everything cached: the "model" is never called
    assert cached == recs


def test_empty_attribute_text_gets_the_mean_row(monkeypatch):
    import fastrec.data

    def fake(texts, **kw):
        return torch.tensor([[float(len(t)), 1.0] for t in texts])

    monkeypatch.setattr(fastrec.data, "text_embeddings", fake)
    recs = {0: {"attributes": "ab"}, 1: {"attributes": "  "}, 2: {"attributes": "abcd"}}
    emb = kirec.attribute_embeddings(recs)
    torch.testing.assert_close(emb, torch.tensor([[2.0, 1.0], [3.0, 1.0], [4.0, 1.0]]))
    with pytest.raises(ValueError, match="every item has an empty"):
        kirec.attribute_embeddings({0: {"attributes": ""}})


def test_training_pairs_and_full_ranking():
    data = synthetic(num_users=30, num_items=40)
    split = leave_one_out(data)
    inputs, targets = kirec.training_pairs(split, max_len=6)
    seq = [i + 1 for i in split.train.sequences()[0]]
    row = inputs[0][inputs[0] != 0].tolist()
    assert row == seq[:-1][-6:] and targets[0][targets[0] != 0].tolist() == seq[1:][-6:]
    assert torch.equal(inputs != 0, targets != 0)
    q, items = torch.randn(7, 4), torch.randn(12, 4)
    exclude = (torch.tensor([0, 2, 2, 3, 3, 3, 3, 5]), torch.tensor([1, 5, 7, 2, 3]))
    top = kirec._full_ranking_topk(q, items, 4, exclude)
    scores = q @ items.t()
    scores[:, 0] = float("-inf")
    for r in range(7):
        scores[r, exclude[1][exclude[0][r]:exclude[0][r + 1]]] = float("-inf")
    assert torch.equal(top, scores.topk(4, dim=1).indices)
    tied = kirec._full_ranking_topk(torch.ones(2, 3), torch.ones(9, 3), 5)  # all scores equal
    assert tied.tolist() == [[1, 2, 3, 4, 5]] * 2  # lowest ids first, padding id 0 never ranked


def test_train_and_evaluate_end_to_end_on_synthetic():
    data = synthetic(num_users=80, num_items=60)
    split = leave_one_out(data)
    semantic = torch.randn(60, 24)
    model, hist = kirec.train(split, semantic, "gate", epochs=1, batch_size=64, d=16, log=lambda *_: None)
    assert set(hist["test"]) == {"HR@10", "HR@20", "NDCG@10", "NDCG@20"}
    assert 0 <= hist["test"]["NDCG@10"] <= hist["test"]["HR@10"] <= hist["test"]["HR@20"] <= 1
    assert hist["best_epoch"] == 1
    with pytest.raises(ValueError, match="semantic must be"):
        kirec.build_model(60, torch.randn(59, 24), "gate")
    with pytest.raises(ValueError, match="fusion must be"):
        kirec.build_model(60, semantic, "sum")


def test_real_scientific_data_pipeline_pieces(shared_data):
    data = kirec.load_lcrec(shared_data / "amazon-scientific")
    recs = kirec.extract_attributes(data.item_text, data.num_items)
    filled = sum(bool(r["attributes"].strip()) for r in recs.values())
    assert data.num_items == 4344 and filled >= 0.99 * data.num_items
    split = leave_one_out(data)
    model = kirec.build_model(data.num_items, None, "none")
    metrics = kirec.evaluate(model, split, "test")
    assert 0 <= metrics["HR@20"] < 0.05  # an untrained model ranks near chance (20 / 4344)


def test_checkpoint_round_trip_through_the_cli(tmp_path, capsys):
    import argparse

    folder = synthetic(tmp_path / "data", num_users=60, num_items=80)
    data = kirec.load_lcrec(folder)
    split = leave_one_out(data)
    model, hist = kirec.train(split, torch.randn(80, 96), "gate", epochs=1, batch_size=64, log=lambda *_: None)
    path = tmp_path / "model.pt"
    kirec._save_checkpoint(path, model, {"fusion": "gate", "num_items": 80, "semantic_dim": 96})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model.pt")]  # no temp file left
    kirec._cmd_eval(argparse.Namespace(data=str(folder), checkpoint=str(path), device="cpu"))
    printed = json.loads(capsys.readouterr().out)
    assert printed["test"] == pytest.approx(hist["test"])


def _cold_item_data(num_users=500, clusters=8, per_cluster=100, warm=3, seed=0):
    """Sequences where the next item's cluster is the current item's cluster + 1 and the item within it is
    one of `warm` popular items (70%) or one of the many cold ones; semantic rows = cluster centroid + noise."""
    from fastrec.data import from_sequences

    g = torch.Generator().manual_seed(seed)
    num_items = clusters * per_cluster
    cluster = torch.arange(num_items) // per_cluster
    centroids = torch.randn(clusters, 48, generator=g)
    semantic = centroids[cluster] + 0.1 * torch.randn(num_items, 48, generator=g)

    def draw(c):
        k = int(torch.randint(0, warm, (1,), generator=g)) if float(torch.rand(1, generator=g)) < 0.7 else \
            int(torch.randint(warm, per_cluster, (1,), generator=g))
        return int(c) * per_cluster + k

    seqs = {}
    for u in range(num_users):
        c = int(torch.randint(0, clusters, (1,), generator=g))
        seq = [draw(c)]
        for _ in range(int(torch.randint(5, 9, (1,), generator=g))):
            c = (c + 1) % clusters
            seq.append(draw(c))
        seqs[str(u)] = seq
    data = from_sequences(seqs, item_vocab=range(num_items))
    return data, semantic


def _hr10_on_cold_inputs(model, split, cold):
    """HR@10 of the test target over test users whose latest history item (the model's only input) is cold."""
    seqs, targets, _ = kirec._eval_inputs(split, "test", model.max_len)
    seqs = seqs[:, -1:]
    keep = cold[seqs[:, -1] - 1]
    model.eval()
    top = model.scores(seqs[keep]).topk(10, dim=1).indices
    return float((top == targets[keep, None]).any(1).float().mean()), int(keep.sum())


def test_kirec_fusion_learns_cold_items_from_semantics():
    data, semantic = _cold_item_data()
    split = leave_one_out(data)
    counts = torch.bincount(split.train.items, minlength=data.num_items)
    cold = counts == 0  # never seen in training: their ID rows are untrained
    # max_len 1: the model sees the latest item only, so the earlier (warm) items cannot reveal the cluster
    kw = dict(epochs=30, patience=4, batch_size=64, d=32, lr=3e-3, max_len=1, device="cpu", log=lambda *_: None)
    results = {}
    for fusion in ("none", "semantic", "add"):
        model, _ = kirec.train(split, semantic, fusion, **kw)
        results[fusion] = _hr10_on_cold_inputs(model, split, cold)
    hr, n = results["none"]
    assert n >= 30, "the data set must have users whose last item is cold"
    random_hr = 10 / data.num_items
    assert results["add"][0] > hr + 0.2, results  # fusion clearly beats IDs only on cold items (~0.6 vs ~0.2)
    assert results["semantic"][0] > 10 * random_hr, results  # semantics alone beat random ranking (0.0125)


def _cli(argv):
    import argparse

    parser = argparse.ArgumentParser()
    kirec.add_parser(parser.add_subparsers())
    args = parser.parse_args(["kirec", *argv])
    return args.func(args)


def test_ids_only_needs_no_item_text(tmp_path, capsys):
    folder = tmp_path / "Notext"
    folder.mkdir()
    seqs = {str(u): [(u + k) % 30 for k in range(6)] for u in range(40)}
    (folder / "Notext.inter.json").write_text(json.dumps(seqs))
    out = tmp_path / "out"
    assert _cli(["train", "--data", str(folder), "--out", str(out), "--fusion", "none", "--backbone", "gru4rec",
                 "--epochs", "2", "--batch-size", "32", "--d", "8", "--max-len", "10", "--device", "cpu",
                 "--no-progress"]) == 0
    assert (out / "gru4rec-none-s0.pt").exists()
    assert (out / "gru4rec-none-s0" / "checkpoints" / "last" / "manifest.json").exists()  # the engine's run
    with pytest.raises(ValueError, match="no item text"):
        kirec.prepare(folder, out, semantic=True)


def _printed_json(out: str) -> dict:
    return json.loads(out[out.index("{\n"):out.index("\nwrote")])


def test_cli_resume_continues_the_run(tmp_path, capsys):
    folder = synthetic(tmp_path / "data", num_users=60, num_items=50)
    base = ["train", "--data", str(folder), "--fusion", "gate", "--d", "8", "--max-len", "10", "--device", "cpu",
            "--batch-size", "32", "--no-progress", "--patience", "5", "--seed", "1"]
    _cli(base + ["--out", str(tmp_path / "full"), "--epochs", "3"])
    full = _printed_json(capsys.readouterr().out)
    _cli(base + ["--out", str(tmp_path / "cut"), "--epochs", "2"])
    capsys.readouterr()
    _cli(base + ["--out", str(tmp_path / "cut"), "--epochs", "3", "--resume",
                 str(tmp_path / "cut" / "sasrec-gate-s1" / "checkpoints" / "last")])
    resumed = _printed_json(capsys.readouterr().out)
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-6)  # 2 + 1 epochs == 3 epochs unbroken


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec", "bert4rec"])
def test_every_backbone_trains_with_early_stopping(backbone):
    data = synthetic(num_users=80, num_items=60)
    split = leave_one_out(data)
    semantic = torch.randn(60, 24)
    model, hist = kirec.train(split, semantic, "concat", epochs=6, patience=1, batch_size=64, d=16,
                              backbone=backbone, device="cpu", log=lambda *_: None)
    assert hist["epochs_run"] <= 6 and hist["best_epoch"] <= hist["epochs_run"]
    if hist["converged"]:
        assert hist["epochs_run"] == hist["best_epoch"] + 1  # stopped one epoch after the last improvement
    assert 0 <= hist["test"]["NDCG@10"] <= hist["test"]["HR@10"] <= 1
    assert isinstance(model, kirec.BACKBONES[backbone])


def test_chat_template_and_per_item_sources(tmp_path):
    model, tok = _tiny_causal_lm()
    tok.chat_template = "{% for m in messages %}[EOS] {{ m['content'] }}{% endfor %} attributes"
    texts, special = kirec._chat(["title beaker"], tok)
    assert texts == ["[EOS] title beaker attributes"] and special is False

    def fake_llm(prompts, *a, **k):
        return ["brand: pyrex" if "beaker" in p else "" for p in prompts]

    import fastrec.recipes.kirec as mod

    orig = mod._llm_attributes
    mod._llm_attributes = fake_llm
    try:
        text = {0: {"title": "glass beaker"}, 1: {"title": "drill", "brand": "Acme"}}
        recs = kirec.extract_attributes(text, 2, cache=tmp_path / "a.jsonl", model=model, tokenizer=tok,
                                        model_name="tiny")
    finally:
        mod._llm_attributes = orig
    assert recs[0]["source"] == "llm:tiny" and recs[0]["attributes"] == "brand: pyrex"
    assert recs[1]["source"] == kirec.FALLBACK and recs[1]["attributes"] == "brand: Acme\ntitle: drill"
    assert kirec.attribute_sources(recs) == {kirec.FALLBACK: 1, "llm:tiny": 1}
    again = kirec.extract_attributes(text, 2, cache=tmp_path / "a.jsonl", model=object(), model_name="tiny")
    assert again == recs  # both kinds of record are reused for the same generator


def test_prepare_with_the_generator_llm_as_encoder(tmp_path):
    model, tok = _tiny_causal_lm()
    model.save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    folder = synthetic(tmp_path / "data", num_users=20, num_items=12)
    logs = []
    data, semantic, info = kirec.prepare(folder, tmp_path / "out", generator=str(tmp_path / "llm"), encoder="generator",
                                         device="cpu", batch_size=4, log=logs.append)
    assert semantic.shape == (12, 16)  # D = the generator's hidden size
    assert info["encoder"].startswith("llm last hidden states") and sum(info["attribute_sources"].values()) == 12
    assert set(info["attribute_sources"]) <= {"llm:llm", kirec.FALLBACK}
    assert any("attributes of 12 items" in line for line in logs)
    with pytest.raises(ValueError, match="needs --model"):
        kirec.prepare(folder, tmp_path / "out", encoder="generator")


@pytest.mark.parametrize("backbone", ["sasrec", "bert4rec"])
def test_length_sorted_evaluation_equals_brute_force(backbone):
    data = synthetic(num_users=70, num_items=40)
    split = leave_one_out(data)
    model = kirec.build_model(40, torch.randn(40, 24), "add", d=8, max_len=12, backbone=backbone).eval()
    got = kirec.evaluate(model, split, "test", batch_size=16)  # several length-sorted batches
    seqs, targets, (ptr, idx) = kirec._eval_inputs(split, "test", 12)
    scores = model.scores(seqs)
    for r in range(seqs.shape[0]):
        scores[r, idx[ptr[r]:ptr[r + 1]]] = float("-inf")  # history excluded
    rank = (scores > scores.gather(1, targets[:, None])).sum(1)
    assert got["HR@10"] == pytest.approx(float((rank < 10).float().mean()), abs=1e-6)
    ndcg = torch.where(rank < 10, 1 / torch.log2(rank.float() + 2), torch.zeros(()))
    assert got["NDCG@10"] == pytest.approx(float(ndcg.mean()), abs=1e-6)
    rows = torch.tensor([3, 0, 5])
    sub_ptr, sub_idx = kirec._csr_rows(ptr, idx, rows)
    assert sub_idx.tolist() == sum((idx[ptr[r]:ptr[r + 1]].tolist() for r in rows.tolist()), [])


def test_no_progress_silences_the_llm_and_encoder_bars(tmp_path, capsys):
    """`--no-progress` (progress=False) reaches both long passes: LLM extraction and the text encoder."""
    model, tok = _tiny_causal_lm()
    model.save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    folder = synthetic(tmp_path / "data", num_users=20, num_items=12)

    def run(progress: bool, out: str) -> str:
        kirec.prepare(folder, tmp_path / out, generator=str(tmp_path / "llm"), encoder="generator", device="cpu",
                      batch_size=4, log=lambda _: None, progress=progress)
        return capsys.readouterr().err

    quiet = run(False, "quiet")
    assert "extract attributes" not in quiet and "text embeddings" not in quiet
    loud = run(True, "loud")
    assert "extract attributes" in loud and "text embeddings" in loud  # the bars exist when asked for
    assert _cli(["extract", "--data", str(folder), "--out", str(tmp_path / "cli"), "--model", str(tmp_path / "llm"),
                 "--encoder", "generator", "--device", "cpu", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "extract attributes" not in err and "text embeddings" not in err
