"""The SeLLa-Rec recipe: CTR data, answer tokens (word and SentencePiece tokenizers), the original's robust
InfoNCE and jointly aligned MF with early stopping, device plumbing, the proof that the spliced collab
tokens carry the signal, UAUC, the CLI, and a tiny end-to-end run whose saved result reloads."""

import json
import math
import types

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from fastrec.data import synthetic  # noqa: E402
from fastrec.eval import auc, uauc  # noqa: E402
from fastrec.integrations.hf import word_tokenizer  # noqa: E402
from fastrec.recipes import sellarec as sr  # noqa: E402


def tiny_cfg(out, **kw):
    cfg = sr.SellaRecConfig(out=str(out), mf_dim=16, mf_epochs=40, mf_patience=5, mf_batch=512, proj_mid=16,
                            tallrec_epochs=1.0, tallrec_lr=3e-3, lora_r=8, lora_alpha=16, lora_epochs=1.0,
                            lora_lr=3e-3, max_users=40, eval_neg=2, train_pos_per_user=1, tiny_hidden=32,
                            batch_size=16, gradient_checkpointing=False, max_length=128)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


# ------------------------------------------------------------------------------------------- data


def test_ctr_sets_from_implicit_data():
    data = synthetic(num_users=50, num_items=80)
    cfg = tiny_cfg("unused", max_users=None, num_neg=2, eval_neg=3)
    mf_tr, tr, va, te, counts, mf_va = sr.build_ctr(data, cfg)
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
    assert len(mf_va) == len(va) == 50 * 4  # every user is sampled


def test_llm_sets_take_a_seeded_sample_of_users_not_the_first_ones():
    data = synthetic(num_users=60, num_items=80)
    _, tr, va, te, _, mf_va = sr.build_ctr(data, tiny_cfg("unused", max_users=10))
    users = set(te.users.tolist())
    assert len(users) == 10 and users != set(range(10))
    assert set(tr.users.tolist()) == users == set(va.users.tolist())
    assert len(set(mf_va.users.tolist())) == 60  # MF's early stopping sees every user
    _, _, _, te2, _, _ = sr.build_ctr(data, tiny_cfg("unused", max_users=10))
    assert set(te2.users.tolist()) == users  # seeded: the same sample again
    _, _, _, te3, _, _ = sr.build_ctr(data, tiny_cfg("unused", max_users=10, seed=1))
    assert set(te3.users.tolist()) != users


def movielens(tmp_path):
    rows = []
    for u, ratings in ((1, [5, 2, 4, 1, 4, 5, 3, 2, 4, 1, 5, 2]), (2, [3, 5, 4, 1, 2, 5, 4])):
        rows += [f"{u}::{10 + k}::{r}::{k + 1}" for k, r in enumerate(ratings)]
    (tmp_path / "ratings.dat").write_text("\n".join(rows) + "\n")
    (tmp_path / "movies.dat").write_text("10::Heat (1995)::Action\n12::Up (2009)::Animation\n")
    return sr.load_data(str(tmp_path))


def test_ctr_sets_from_movielens_ratings_give_several_test_rows_per_user(tmp_path):
    data = movielens(tmp_path)
    mf_tr, tr, va, te, _, mf_va = sr.build_ctr(data, tiny_cfg("unused", max_users=None, rated_eval_per_user=3))
    u1, u2 = data.user_map["1"], data.user_map["2"]
    imap = data.item_map
    got = sorted((int(u), data.item_ids[int(i)], float(y)) for u, i, y in zip(te.users, te.items, te.labels,
                                                                               strict=True))
    # user 1 (12 ratings): the last 3 are test; user 2 (7 ratings): k = min(3, (7 - 1) // 3) = 2
    assert got == sorted([(u1, "19", 0.0), (u1, "20", 1.0), (u1, "21", 0.0), (u2, "15", 1.0), (u2, "16", 1.0)])
    assert sorted(data.item_ids[int(i)] for i in va.items[va.users == u1]) == ["16", "17", "18"]
    # a test row's history = earlier items rated >= 4, in order
    r = [k for k in range(len(te)) if int(te.users[k]) == u1 and data.item_ids[int(te.items[k])] == "19"][0]
    assert te.history[r] == [imap[str(i)] for i in (10, 12, 14, 15, 18)]
    assert len(mf_tr) == 12 - 6 + 7 - 4 and len(mf_va) == len(va)
    assert sr._title(data, imap["10"]) == "Heat (1995)"
    # user 1's test rows hold both labels: UAUC is defined on this split
    res = sr.metrics(torch.linspace(0, 1, len(te)), te, torch.ones(data.num_items, dtype=torch.bool))
    assert res["uauc_users_all"] == 1 and not math.isnan(res["uauc_all"])


def test_uauc_is_nan_with_a_warning_when_no_user_has_both_labels():
    s, y, u = torch.tensor([0.2, 0.7, 0.4]), torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 1, 2])
    with pytest.warns(RuntimeWarning, match="UAUC is undefined"):
        assert math.isnan(float(uauc(s, y, u)))
    ctr = sr.CTRSet(u, torch.tensor([0, 1, 2]), y, [[], [], []])
    res = sr.metrics(s, ctr, torch.ones(3, dtype=torch.bool))
    assert math.isnan(res["uauc_all"]) and res["uauc_users_all"] == 0 and res["auc_all"] == 0.0


# ----------------------------------------------------------------------------------- answer tokens


def sentencepiece_tokenizer():
    """A Llama-2-like SentencePiece (Unigram) tokenizer built locally: " Yes" encodes to "▁" + "▁Yes"."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", "▁", "▁Yes", "▁No", "▁Answer", "▁:", "▁The", "▁user"]
    vocab = [(p, -2.0 if p == "▁" else -3.0) for p in pieces] + [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyzAYNT:"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")


def test_answer_tokens_with_a_sentencepiece_tokenizer():
    tok = sentencepiece_tokenizer()
    first = [tok.encode(w, add_special_tokens=False)[0] for w in (" Yes", " No")]
    assert first[0] == first[1] == tok.convert_tokens_to_ids("▁")  # the trap of "the first token of ' Yes'"
    ans = sr.answer_tokens(tok)
    assert tok.convert_ids_to_tokens([ans.yes, ans.no]) == ["▁Yes", "▁No"] and ans.prefix == ()
    batch = sr._encode(tok, ["The user Answer :", "Answer :"], [1.0, 0.0], answer=ans)
    labels = batch["labels"]
    assert (labels != -100).sum(1).tolist() == [1, 1]
    assert labels[0][labels[0] != -100].item() == ans.yes and labels[1][labels[1] != -100].item() == ans.no
    # the scoring position is the last prompt token, whose next token is the answer in training
    assert batch["input_ids"][0, batch["last"][0] + 1] == ans.yes


def test_answer_tokens_with_a_shared_prefix_and_bad_tokenizers():
    from tokenizers import normalizers

    tok = word_tokenizer([sr.PROMPT, "Yes No"])
    yes, no = sr.answer_token_ids(tok)
    assert tok.convert_ids_to_tokens([yes, no]) == ["Yes", "No"]
    # answers that share leading tokens: the shared part becomes the prefix, the first difference decides
    tok2 = word_tokenizer(["Answer : the Yes No"])
    tok2.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.Replace(" Yes", " the Yes"),
                                                             normalizers.Replace(" No", " the No")])
    ans = sr.answer_tokens(tok2)
    assert tok2.convert_ids_to_tokens(list(ans.prefix)) == ["the"]
    batch = sr._encode(tok2, ["Answer :"], None, answer=ans)
    assert tok2.convert_ids_to_tokens(batch["input_ids"][0].tolist()) == ["Answer", ":", "the"]
    assert batch["last"].tolist() == [2]
    with pytest.raises(ValueError, match="cannot encode the answer"):
        sr.answer_token_ids(word_tokenizer(["nothing here"]))
    same = word_tokenizer(["Answer : X Yes No"])
    same.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.Replace("Yes", "X"),
                                                             normalizers.Replace("No", "X")])
    with pytest.raises(ValueError, match="cannot tell the answers apart"):
        sr.answer_tokens(same)


def test_prompt_and_loss_mask_with_the_word_tokenizer():
    tok = word_tokenizer([sr.PROMPT, "Yes No"])
    yes, no = sr.answer_token_ids(tok)
    tok.add_tokens(list(sr.TOKENS), special_tokens=True)
    batch = sr._encode(tok, ["Answer :", "The user has liked : Answer :"], [1.0, 0.0])
    assert batch["labels"].tolist()[0][:3] == [-100, -100, yes]
    assert (batch["labels"] != -100).sum(1).tolist() == [1, 1]
    assert batch["labels"][1, batch["last"][1] + 1] == no
    assert batch["attention_mask"].sum(1).tolist() == [3, 8]  # prompt + answer
    long = sr._encode(tok, ["The user has liked : Answer :"], [1.0], max_length=4)
    assert long["input_ids"].shape[1] == 4 and long["labels"][0, -1] == yes  # the oldest tokens go


# ------------------------------------------------------------------------------ step 2: MF + alignment


def original_robust_infonce(out_1, out_2, tau=0.2, q=0.01, lam=0.1):
    """wzhwzhwzh0921/SeLLa's formula, written out directly (exp, sums, powers)."""
    out_1, out_2 = torch.nn.functional.normalize(out_1, dim=1), torch.nn.functional.normalize(out_2, dim=1)
    neg = torch.exp(out_1 @ out_2.T / tau).sum(1)
    pos = torch.exp((out_1 * out_2).sum(-1) / tau)
    return (-(pos ** q) / q).mean() + (((lam * (pos + neg)) ** q) / q).mean()


def test_robust_infonce_matches_the_original_formula():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(12, 20, generator=g, dtype=torch.float64), torch.randn(12, 20, generator=g, dtype=torch.float64)
    a.requires_grad_(True)
    got = sr.robust_infonce(a, b)
    want = original_robust_infonce(a, b)
    torch.testing.assert_close(got, want)
    ga, = torch.autograd.grad(got, a)
    wa, = torch.autograd.grad(original_robust_infonce(a, b), a)
    torch.testing.assert_close(ga, wa)
    for tau, q, lam in ((0.5, 0.1, 0.3), (0.05, 0.01, 0.1)):
        torch.testing.assert_close(sr.robust_infonce(a, b, tau, q, lam), original_robust_infonce(a, b, tau, q, lam))
    # aligned pairs score lower than shuffled ones
    assert sr.robust_infonce(b + 0.01 * a, b) < sr.robust_infonce(b[torch.randperm(12, generator=g)], b)
    assert sr.infonce(b, b) < sr.infonce(b.flip(0), b)


def collab_only_ctr(num_users=150, num_items=40, rows=(4000, 600, 600), seed=0):
    """A CTR problem whose labels depend only on collaborative factors: p(yes) = sigmoid(u . i + 1.5 (b_u + b_i)).
    Every item has the same title and no user has a history, so the prompt text carries nothing."""
    g = torch.Generator().manual_seed(seed)
    uf, itf = torch.randn(num_users, 4, generator=g), torch.randn(num_items, 4, generator=g)
    bu, bi = torch.randn(num_users, generator=g), torch.randn(num_items, generator=g)

    def ctr(n):
        u, i = torch.randint(0, num_users, (n,), generator=g), torch.randint(0, num_items, (n,), generator=g)
        p = torch.sigmoid((uf[u] * itf[i]).sum(-1) + 1.5 * (bu[u] + bi[i]))
        return sr.CTRSet(u, i, torch.bernoulli(p, generator=g), [[] for _ in range(n)])

    data = types.SimpleNamespace(item_text={i: {"title": "a thing"} for i in range(num_items)},
                                 item_ids=[str(i) for i in range(num_items)], num_items=num_items,
                                 num_users=num_users)
    return data, *(ctr(n) for n in rows)


def test_joint_mf_stops_early_on_validation_auc_and_keeps_the_best_epoch():
    data, tr, va, te = collab_only_ctr(rows=(3000, 600, 600))
    cfg = tiny_cfg("unused", mf_epochs=200, mf_patience=4, mf_batch=512, mf_lr=3e-2)
    text = torch.randn(data.num_items, 24)
    aligned = sr.train_mf(tr, va, data.num_users, data.num_items, cfg, llm_items=text)
    hist = cfg.history["mf_valid_auc"]
    assert len(hist) < 200 and hist.index(max(hist)) == len(hist) - 1 - 4  # stopped 4 epochs after the best
    assert sr._mf_auc(aligned, va, torch.device("cpu")) == pytest.approx(max(hist))  # the best epoch came back
    assert all(x > 0 for x in cfg.history["mf_align_loss"][:1])
    # the alignment trained the LLM item table and the projection with MF (jointly)
    assert not torch.equal(aligned.llm_items.detach(), text)
    z = torch.nn.functional.normalize(aligned.proj(aligned.mf()[1]), dim=-1)
    t = torch.nn.functional.normalize(aligned.llm_items, dim=-1)
    assert (z * t).sum(-1).mean() > (z * t.roll(1, 0)).sum(-1).mean() + 0.1
    assert float(auc(aligned.score(te.users, te.items).detach(), te.labels)) > 0.65


def test_device_plumbing_of_every_step(device):
    """Step 2 on `device`, the projection and tables on the LLM's device, scoring there (cuda skips here)."""
    data, tr, va, te = collab_only_ctr(rows=(400, 100, 60))
    cfg = tiny_cfg("unused", device=str(device), mf_epochs=2, lora_epochs=0.1)
    llm, tok = sr._llm(data, cfg, None)
    assert next(llm.parameters()).device.type == device.type
    text = sr.item_vectors(llm, tok, data)
    mf, tables, aligned = sr.step2_collab(tr, va, data.num_users, data.num_items, text, cfg)
    assert next(mf.parameters()).device.type == device.type
    tables = {k: v.cpu() for k, v in tables.items()}  # CPU tables are moved to the projection's device once
    proj = sr.build_projection(cfg.tiny_hidden, tables["warm"].shape[1], cfg, aligned)
    sr._attach(llm, tok, proj, tables, cfg)
    emb = llm.get_input_embeddings()
    assert all(t.device.type == device.type for t in emb.tables.values())
    s = sr.score(llm, tok, data, te, cfg)
    assert s.shape == (60,) and bool(((s > 0) & (s < 1)).all())
    llm.to(torch.float64)  # the tables follow the model, as buffers do
    assert all(t.dtype == torch.float64 for t in emb.tables.values())


# ------------------------------------------------------------- the proof: the collab tokens carry the signal


def test_sellarec_learns_the_collaborative_signal_and_the_spliced_rows_carry_it(tmp_path):
    """Labels depend only on collaborative factors; the prompt text is the same for every example. SeLLa-Rec
    (joint MF + robust InfoNCE, then LoRA with the three spliced tokens) reaches >= 0.9 of MF's test AUC;
    with the spliced rows replaced by zeros it is at chance."""
    data, tr, va, te = collab_only_ctr()
    cfg = tiny_cfg(tmp_path, mf_epochs=200, mf_patience=10, proj_mid=32, lora_dropout=0.0, lora_epochs=3.0,
                   prompt="The user is <User_ID> , the item is <Item_ID> , <Warm_ID> . Answer :")
    llm, tok = sr._llm(data, cfg, None)
    text = sr.item_vectors(llm, tok, data)
    mf, tables, aligned = sr.step2_collab(tr, va, data.num_users, data.num_items, text, cfg)
    mf_auc = float(auc(mf.score(te.users, te.items).detach(), te.labels))
    assert mf_auc > 0.7
    lora = sr.step3_sellarec(llm, tok, data, tr, mf, tables, aligned, cfg)
    sella_auc = float(auc(sr.score(lora, tok, data, te, cfg), te.labels))
    zero_auc = float(auc(sr.score(lora, tok, data, te, cfg, zero_rows=True), te.labels))
    assert sella_auc >= 0.9 * mf_auc, (sella_auc, mf_auc)
    assert abs(zero_auc - 0.5) < 0.05, zero_auc


def test_step3_resume_from_a_checkpoint_ends_where_the_unbroken_run_ends(tmp_path):
    """--save-every writes checkpoints (adapter, optimizer, the collab projections, manifest); --resume from
    the one at step 2 of 4 gives the same weights as the unbroken run."""
    import shutil

    data, tr, va, _ = collab_only_ctr(rows=(64, 40, 10))

    def run(resume=None):
        cfg = tiny_cfg(tmp_path / "run", mf_epochs=2, lora_steps=4, save_every=2, batch_size=8, lora_dropout=0.0,
                       resume=resume, prompt="The user is <User_ID> , the item is <Item_ID> , <Warm_ID> . Answer :")
        llm, tok = sr._llm(data, cfg, None)
        mf, tables, aligned = sr.step2_collab(tr, va, data.num_users, data.num_items, sr.item_vectors(llm, tok, data),
                                              cfg)
        lora = sr.step3_sellarec(llm, tok, data, tr, mf, tables, aligned, cfg)
        return {k: v.detach().clone() for k, v in lora.state_dict().items()}

    unbroken = run()
    ckpts = tmp_path / "run" / "step3" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert (ckpts / "checkpoint-2" / sr.PROJECTION_FILE).is_file()
    assert (ckpts / "checkpoint-2" / "manifest.json").is_file()
    shutil.rmtree(ckpts / "checkpoint-4")  # as if stopped after step 2
    resumed = run(resume="latest")
    changed = [k for k in unbroken if "projection" in k or "lora_" in k]
    assert changed and all(torch.equal(resumed[k], unbroken[k]) for k in unbroken), \
        [k for k in unbroken if not torch.equal(resumed[k], unbroken[k])][:3]


# --------------------------------------------------------------------------------- end to end, CLI


def test_end_to_end_tiny_run_saves_and_reloads(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(out)
    results = sr.train(cfg)
    assert list(results) == ["mf", "tallrec", "sellarec"]
    for model in results:
        r = results[model]
        assert r["n_all"] == r["n_warm"] + r["n_cold"] > 0
        assert 0.0 <= r["auc_all"] <= 1.0 and 0.0 <= r["uauc_all"] <= 1.0
    assert results["mf"]["auc_all"] > 0.55  # the collaborative model learns on the synthetic factors
    assert "tallrec_loss" in cfg.history and "lora_loss" in cfg.history and "mf_valid_auc" in cfg.history
    for name in ("sellarec.pt", "config.json", "results.json", "sellarec.png", "tokenizer"):
        assert (out / name).exists()
    saved = json.loads((out / "results.json").read_text())
    again = sr.evaluate(out)
    for key in ("auc_all", "uauc_all", "auc_warm"):
        assert again["sellarec"][key] == pytest.approx(saved["sellarec"][key], abs=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # written to a temp folder, then renamed


def test_frozen_alignment_option_runs(tmp_path):
    """fastrec's earlier recipe stays available: no TALLRec step, MF alone, then projections aligned."""
    cfg = tiny_cfg(tmp_path / "run", tallrec=False, align="frozen", align_loss="infonce", align_epochs=1)
    results = sr.train(cfg)
    assert list(results) == ["mf", "sellarec"] and "align_loss" in cfg.history


def test_scores_depend_on_the_spliced_collab_rows(tmp_path):
    """The LLM's answer reads the <User_ID> row: swapping the MF user table changes P(Yes)."""
    cfg = tiny_cfg(tmp_path / "x")
    data = sr.load_data(cfg.data, cfg.seed)
    mf_tr, tr, _, te, _, mf_va = sr.build_ctr(data, cfg)
    llm, tok = sr._llm(data, cfg, None)
    text = sr.item_vectors(llm, tok, data)
    assert text.shape == (data.num_items, cfg.tiny_hidden) and text.dtype == torch.float32
    mf, tables, aligned = sr.step2_collab(mf_tr, mf_va, data.num_users, data.num_items, text, cfg)
    sr._attach(llm, tok, sr.build_projection(cfg.tiny_hidden, cfg.tiny_hidden, cfg, aligned), tables, cfg)
    s1 = sr.score(llm, tok, data, te, cfg)
    emb = llm.get_input_embeddings()
    emb.set_tables(user=torch.randn_like(emb.tables["user"]))
    s2 = sr.score(llm, tok, data, te, cfg)
    assert (s1 - s2).abs().max() > 1e-5 and bool(((s1 > 0) & (s1 < 1)).all())


def parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    sr.add_parser(parser.add_subparsers())
    return parser.parse_args(argv)


def test_cli_flags_cover_the_config_and_demo_keeps_data_model_device():
    args = parse(["sellarec", "train", "--demo", "--data", "some/folder", "--model", "ckpt", "--device", "cuda",
                  "--lora-r", "4", "--no-tallrec", "--lr", "0.01"])
    cfg = sr.config_from_args(args)
    assert (cfg.data, cfg.model, cfg.device, cfg.lora_r, cfg.tallrec, cfg.lora_lr) == \
        ("some/folder", "ckpt", "cuda", 4, False, 0.01)
    assert cfg.mf_dim == sr.DEMO["mf_dim"] and cfg.lora_epochs == sr.DEMO["lora_epochs"]  # the rest: the demo's
    # engine flags left at their argparse defaults keep the demo's values too (batch size, LoRA alpha, ...)
    assert sr.config_from_args(parse(["sellarec", "train", "--demo", "--out", "o"])) == sr.demo_config("o")
    assert (cfg.batch_size, cfg.lora_alpha, cfg.gradient_checkpointing) == \
        (sr.DEMO["batch_size"], sr.DEMO["lora_alpha"], sr.DEMO["gradient_checkpointing"])
    full = sr.config_from_args(parse(["sellarec", "train"]))
    assert full == sr.SellaRecConfig()  # the defaults are the original code's
    assert (full.mf_dim, full.mf_lr, full.mf_batch, full.mf_patience, full.tau, full.robust_q) == \
        (256, 1e-2, 10240, 50, 0.2, 0.01)
    assert (full.lora_r, full.lora_alpha, full.lora_dropout, full.lora_lr, full.adam_beta2, full.max_length) == \
        (64, 16, 0.05, 2e-4, 0.95, 768)
    assert full.align == "joint" and full.align_loss == "robust" and full.tallrec and full.gradient_checkpointing
    # the engine's shared flags land on the recipe's fields
    eng = sr.config_from_args(parse(["sellarec", "train", "--epochs", "2", "--steps", "7", "--patience", "3",
                                     "--save-every", "5", "--resume", "--dtype", "bf16", "--grad-accum", "4",
                                     "--no-gradient-checkpointing", "--lora-targets", "c_attn"]))
    assert (eng.lora_epochs, eng.lora_steps, eng.mf_patience, eng.save_every, eng.resume, eng.dtype, eng.grad_accum,
            eng.gradient_checkpointing, eng.lora_targets) == (2, 7, 3, 5, "latest", "bf16", 4, False, "c_attn")
    # every other field has its own flag
    for f in sr.fields(sr.SellaRecConfig):
        if f.name in ("out", "history") or f.name in sr.ENGINE_FLAGS.values():
            continue
        value = getattr(sr.SellaRecConfig(), f.name)
        flag = "--" + f.name.replace("_", "-")
        argv = [flag] if value is True else [f"--no-{f.name.replace('_', '-')}"] if value is False else \
            [flag, str(value if value is not None else 3)]
        assert getattr(parse(["sellarec", "train", *argv]), f.name) is not None, f.name
    with pytest.raises(ValueError, match="align must be one of"):
        sr.SellaRecConfig(align="sideways")


def test_eval_of_a_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="holds no trained SeLLa-Rec run"):
        sr.evaluate(tmp_path)


def test_real_amazon_scientific_ctr(shared_data):
    folder = shared_data / "amazon-scientific"
    if not folder.is_dir():
        pytest.skip("amazon-scientific not present")
    data = sr.load_data(str(folder))
    mf_tr, tr, va, te, counts, mf_va = sr.build_ctr(data, tiny_cfg("unused", max_users=200))
    assert len(te) == 200 * 3 and te.labels.sum() == 200
    assert all(len(h) <= 10 for h in te.history) and sr._title(data, int(te.items[0]))
    assert bool((counts >= 0).all()) and counts.sum() == mf_tr.labels.sum()
    assert len(mf_va) == 3 * data.num_users


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
