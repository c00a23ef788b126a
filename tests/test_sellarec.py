"""The SeLLa-Rec recipe: CTR data, prompts and answer labels, Yes/No ids, and a tiny end-to-end run whose
saved result reloads to the same scores."""

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from fastrec.data import synthetic  # noqa: E402
from fastrec.integrations.hf import word_tokenizer  # noqa: E402
from fastrec.recipes import sellarec as sr  # noqa: E402


def tiny_cfg(out, **kw):
    cfg = sr.SellaRecConfig(out=str(out), mf_dim=16, mf_epochs=5, mf_lr=1e-2, proj_mid=16, align_epochs=1,
                            lora_epochs=1, max_users=24, eval_neg=2, train_pos_per_user=1, tiny_hidden=32,
                            batch_size=16)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_ctr_sets_from_implicit_data():
    data = synthetic(num_users=50, num_items=80)
    cfg = tiny_cfg("unused", max_users=None, num_neg=2, eval_neg=3)
    mf_tr, tr, va, te, counts = sr.build_ctr(data, cfg)
    seqs = data.sequences()
    # test: each user's last item is the positive, 3 unseen negatives share its history
    assert len(te) == 50 * 4 and te.labels.sum() == 50
    for r in range(len(te)):
        u, i = int(te.users[r]), int(te.items[r])
        assert te.history[r] == seqs[u][:-1][-10:]
        assert (i == seqs[u][-1]) == bool(te.labels[r]) and (bool(te.labels[r]) or i not in seqs[u])
    # train examples never use valid / test targets, histories precede the target
    for r in torch.nonzero(tr.labels).flatten().tolist():
        s = seqs[int(tr.users[r])]
        k = s.index(int(tr.items[r]))
        assert k < len(s) - 2 and tr.history[r] == s[max(0, k - 10):k]
    assert mf_tr.labels.sum() == sum(len(s) - 2 for s in seqs) and len(mf_tr) == 3 * mf_tr.labels.sum()
    assert counts.sum() == mf_tr.labels.sum()


def test_ctr_sets_from_movielens_ratings(tmp_path):
    rows = ["1::10::5::1", "1::11::2::2", "1::12::4::3", "1::13::1::4", "1::14::4::5",
            "2::10::3::1", "2::12::5::2", "2::13::4::3"]
    (tmp_path / "ratings.dat").write_text("\n".join(rows) + "\n")
    (tmp_path / "movies.dat").write_text("10::Heat (1995)::Action\n12::Up (2009)::Animation\n")
    data = sr.load_data(str(tmp_path))
    mf_tr, tr, va, te, _ = sr.build_ctr(data, tiny_cfg("unused", max_users=None))
    imap = data.item_map
    got = {(int(u), data.item_ids[int(i)], float(y)) for u, i, y in zip(te.users, te.items, te.labels, strict=True)}
    assert got == {(data.user_map["1"], "14", 1.0), (data.user_map["2"], "13", 1.0)}
    assert {data.item_ids[int(i)] for i in va.items} == {"13", "12"} and float(va.labels.sum()) == 1.0
    # user 1's test history = earlier items rated >= 4, in order
    r = [k for k in range(len(te)) if int(te.users[k]) == data.user_map["1"]][0]
    assert te.history[r] == [imap["10"], imap["12"]]
    assert sr._title(data, imap["10"]) == "Heat (1995)"


def test_answer_ids_prompt_and_loss_mask():
    tok = word_tokenizer([sr.PROMPT, "Yes No"])
    yes, no = sr.answer_token_ids(tok)
    assert tok.convert_ids_to_tokens([yes, no]) == ["Yes", "No"]
    tok.add_tokens(list(sr.TOKENS), special_tokens=True)
    batch = sr._encode(tok, ["Answer :", "The user has liked : Answer :"], ["Yes", "No"], "cpu")
    assert batch["labels"].tolist()[0][:3] == [-100, -100, yes]
    assert (batch["labels"] != -100).sum(1).tolist() == [1, 1]
    assert batch["labels"][1, batch["last"][1] + 1] == no
    assert batch["attention_mask"].sum(1).tolist() == [3, 8]  # prompt + answer
    with pytest.raises(ValueError, match="cannot encode the answer"):
        sr.answer_token_ids(word_tokenizer(["nothing here"]))


def test_end_to_end_tiny_run_saves_and_reloads(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(out)
    results = sr.train(cfg)
    for model in ("mf", "sellarec"):
        r = results[model]
        assert r["n_all"] == r["n_warm"] + r["n_cold"] > 0
        assert 0.0 <= r["auc_all"] <= 1.0 and 0.0 <= r["uauc_all"] <= 1.0
    assert results["mf"]["auc_all"] > 0.55  # the collaborative model learns on the synthetic factors
    for name in ("sellarec.pt", "config.json", "results.json", "sellarec.png", "tokenizer"):
        assert (out / name).exists()
    saved = json.loads((out / "results.json").read_text())
    again = sr.evaluate(out)
    for key in ("auc_all", "uauc_all", "auc_warm"):
        assert again["sellarec"][key] == pytest.approx(saved["sellarec"][key], abs=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # written to a temp folder, then renamed


def test_scores_depend_on_the_spliced_collab_rows(tmp_path):
    """The LLM's answer reads the <User_ID> row: swapping the MF user table changes P(Yes)."""
    cfg = tiny_cfg(tmp_path / "x")
    data = sr.load_data(cfg.data, cfg.seed)
    mf_tr, tr, _, te, _ = sr.build_ctr(data, cfg)
    mf = sr.train_mf(mf_tr, data.num_users, data.num_items, cfg)
    llm, tok = sr._llm(data, cfg, None)
    text = sr.item_text_embeddings(llm, tok, data)
    assert text.shape == (data.num_items, cfg.tiny_hidden) and text.dtype == torch.float32
    users, items = mf()
    sr._attach(llm, tok, users.detach(), items.detach(), text, cfg)
    s1 = sr.score(llm, tok, data, te, cfg)
    emb = llm.get_input_embeddings()
    emb.set_tables(user=torch.randn_like(emb.tables["user"]))
    s2 = sr.score(llm, tok, data, te, cfg)
    assert (s1 - s2).abs().max() > 1e-5 and bool(((s1 > 0) & (s1 < 1)).all())


def test_eval_of_a_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="holds no trained SeLLa-Rec run"):
        sr.evaluate(tmp_path)


def test_real_amazon_scientific_ctr(shared_data):
    folder = shared_data / "amazon-scientific"
    if not folder.is_dir():
        pytest.skip("amazon-scientific not present")
    data = sr.load_data(str(folder))
    mf_tr, tr, va, te, counts = sr.build_ctr(data, tiny_cfg("unused", max_users=200))
    assert len(te) == 200 * 3 and te.labels.sum() == 200
    assert all(len(h) <= 10 for h in te.history) and sr._title(data, int(te.items[0]))
    assert bool((counts >= 0).all()) and counts.sum() == mf_tr.labels.sum()


def test_model_path_loads_a_local_checkpoint(tmp_path):
    """`--model PATH` takes a local checkpoint with from_pretrained (local files only), tokenizer included."""
    data = synthetic(num_users=20, num_items=30)
    cfg = tiny_cfg(tmp_path / "run")
    model, tok = sr._llm(data, cfg, None)
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    cfg.model = str(tmp_path / "ckpt")
    loaded, tok2 = sr._llm(data, cfg, None)
    assert type(loaded) is type(model) and len(tok2) == len(tok)
    ids = tok2("Item: Yes", return_tensors="pt")["input_ids"]
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    with pytest.raises(OSError):
        sr._llm(data, tiny_cfg(tmp_path, model=str(tmp_path / "missing")), None)
