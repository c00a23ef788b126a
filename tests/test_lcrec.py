"""LC-Rec LLM side: tokenizer extension, the six task builders, dataset/collator (loss on the response
only), constrained recommendation mapped back to items, and the train+eval pipeline on synthetic data."""

import random

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fastrec.data.semantic_index import codes_to_index, index_tokens  # noqa: E402
from fastrec.integrations import ItemTrieLogitsProcessor, build_local_tokenizer  # noqa: E402
from fastrec.recipes.lcrec import evaluate, recommend, seqrec_prompt, tiny_llama, train_and_eval, train_lm  # noqa: E402
from fastrec.recipes.lcrec_tasks import (  # noqa: E402
    TASKS,
    TEMPLATE,
    LCRecCollator,
    LCRecDataset,
    add_index_tokens,
    build_tasks,
)


@pytest.fixture(scope="module")
def toy():
    rng = random.Random(0)
    codes = torch.tensor(sorted({(rng.randrange(4), rng.randrange(4), rng.randrange(4)) for _ in range(40)}))
    index = codes_to_index(codes)
    n = len(index)
    text = {i: {"title": f"widget {i}", "brand": f"brand{i % 3}", "categories": f"Lab,Tools,Kind{i % 4}",
                "description": f"a widget number {i}"} for i in range(n)}
    seqs = [[rng.randrange(n) for _ in range(6)] for _ in range(12)]
    return index, text, seqs


def test_build_tasks_all_six(toy):
    index, text, seqs = toy
    ex = build_tasks(seqs, index, text)
    tasks = {t for t, _, _ in ex}
    assert tasks == set(TASKS)
    for task, prompt, response in ex:
        assert prompt.startswith(TEMPLATE.split("{instruction}")[0]) and prompt.endswith("### Response:")
        if task in ("seqrec", "item2index", "itemsearch"):
            assert response in {"".join(v) for v in index.values()}
        if task == "index2item":
            assert response.startswith("widget")
    seqrec = [e for e in ex if e[0] == "seqrec"]
    assert len(seqrec) == sum(len(s) - 1 for s in seqs)
    # the seqrec target of the first prefix of user 0 is its second item
    assert seqrec[0][2] == "".join(index[str(seqs[0][1])]) and "".join(index[str(seqs[0][0])]) in seqrec[0][1]
    assert len([e for e in ex if e[0] == "preferenceobtain"]) == len(seqs)
    with pytest.raises(ValueError, match="unknown"):
        build_tasks(seqs, index, text, tasks=["nope"])


def test_tokenizer_extension_dataset_and_collator(toy):
    index, text, seqs = toy
    tok = build_local_tokenizer(["widget brand lab tools kind"] * 5, vocab_size=100)
    model = tiny_llama(tok, hidden=32, layers=1)
    cb = torch.randn(3, 4, 8)
    before = len(tok)
    added = add_index_tokens(model, tok, {"0": index_tokens(3, 4)}, codebooks=cb)
    assert added == 12 and len(tok) == before + 12
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == len(tok)
    ids = tok.convert_tokens_to_ids(index_tokens(3, 4))
    assert len(set(ids)) == 12 and not torch.allclose(emb[ids[0]], emb[ids[1]])
    # one index token is one token
    assert tok("<a_1><b_2><c_3>", add_special_tokens=False)["input_ids"] == tok.convert_tokens_to_ids(
        ["<a_1>", "<b_2>", "<c_3>"])
    ex = build_tasks(seqs, index, text, tasks=["seqrec"])[:5]
    ds = LCRecDataset(ex, tok)
    row = ds[0]
    n_resp = len(tok(ex[0][2], add_special_tokens=False)["input_ids"]) + 1
    assert row["labels"][-n_resp:] == row["input_ids"][-n_resp:] and row["input_ids"][-1] == tok.eos_token_id
    assert all(v == -100 for v in row["labels"][:-n_resp])
    batch = LCRecCollator(tok)([ds[i] for i in range(5)])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert bool((batch["labels"][batch["attention_mask"] == 0] == -100).all())
    short = LCRecDataset(ex, tok, max_length=6)[0]
    assert len(short["input_ids"]) == 6 and short["input_ids"][-1] == tok.eos_token_id


def test_training_reduces_loss_and_recommend_returns_existing_items(toy):
    index, text, seqs = toy
    ex = build_tasks(seqs, index, text, tasks=["seqrec", "item2index"])
    tok = build_local_tokenizer([p + r for _, p, r in ex], vocab_size=150)
    model = tiny_llama(tok, hidden=32, layers=1)
    add_index_tokens(model, tok, {"0": index_tokens(3, 4)})
    tok.padding_side = "right"
    ds = LCRecDataset(ex, tok)
    losses = train_lm(model, ds, LCRecCollator(tok), steps=30, batch_size=8, lr=3e-3, progress=False)
    assert sum(losses[-5:]) / 5 < losses[0]
    tok.padding_side = "left"
    proc = ItemTrieLogitsProcessor(index, tok)
    prompts = [seqrec_prompt(index, s[:3]) for s in seqs[:3]]
    ranked = recommend(model, tok, proc, prompts, beams=6, k=5)
    assert ranked.shape == (3, 5)
    valid = ranked[ranked >= 0]
    assert valid.numel() >= 3 and bool((valid < len(index)).all())
    for row in ranked.tolist():
        kept = [i for i in row if i >= 0]
        assert len(kept) == len(set(kept))
    res = evaluate(model, tok, index, [s[:-1] for s in seqs], torch.tensor([s[-1] for s in seqs]), beams=6,
                   batch_size=4, progress=False)
    assert set(res) == {"HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10"}
    assert 0 <= res["HR@1"] <= res["HR@5"] <= res["HR@10"] <= 1


def test_train_and_eval_pipeline_on_synthetic(tmp_path):
    from fastrec.data import synthetic
    from fastrec.data.semantic_index import save_index

    folder = synthetic(tmp_path / "data", num_users=40, num_items=30)
    rng = random.Random(0)
    rows = sorted({tuple(rng.randrange(8) for _ in range(3)) for _ in range(200)})[:30]
    save_index(codes_to_index(torch.tensor(rows)), tmp_path / "Synthetic.index.json")
    res = train_and_eval(folder, tmp_path / "Synthetic.index.json", tmp_path, steps=3, batch_size=4, beams=4,
                         max_eval_users=8, hidden=32, progress=False)
    assert res["eval_users"] == 8 and (tmp_path / "lcrec_results.json").is_file()
    assert all(0 <= v <= 1 for v in res["metrics"].values())
    with pytest.raises(ValueError, match="has 2 items but the data set has 30"):
        save_index(codes_to_index(torch.tensor(rows[:2])), tmp_path / "small.json")
        train_and_eval(folder, tmp_path / "small.json", tmp_path, steps=1)


def test_empty_texts_are_rejected_by_tasks_gracefully(toy):
    index, _, seqs = toy
    ex = build_tasks(seqs, index, {}, tasks=["index2item", "fusionseqrec"])
    assert all(r.startswith("item ") for _, _, r in ex)  # no title: the item id stands in, never ""


def test_cli_registers_lcrec():
    from fastrec.cli import build_parser

    args = build_parser().parse_args(["lcrec", "index", "--data", "D", "--epochs", "3"])
    assert args.stage == "index" and args.epochs == 3 and args.func.__module__ == "fastrec.recipes.lcrec"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lcrec", "bogus", "--data", "D"])
