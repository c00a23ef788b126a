"""LC-Rec LLM side: tokenizer extension, the six task builders, dataset/collator (loss on the response
only), constrained recommendation mapped back to items, and the train+eval pipeline on synthetic data."""

import json
import random

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fastrec.data.semantic_index import codes_to_index, index_tokens  # noqa: E402
from fastrec.integrations import ItemTrieLogitsProcessor, build_local_tokenizer  # noqa: E402
from fastrec.recipes.lcrec import evaluate, recommend, seqrec_prompt, tiny_llama  # noqa: E402
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


def _one_trainer(model, tok, ds, tmp_path, steps, lr=3e-3, batch_size=8):
    from fastrec.train import TrainConfig, training_arguments

    cfg = TrainConfig(device="cpu", batch_size=batch_size, steps=steps, lr=lr, progress=False)
    trainer = transformers.Trainer(model=model, args=training_arguments(cfg, tmp_path), train_dataset=ds,
                                   data_collator=LCRecCollator(tok))
    trainer.train()
    return [r["loss"] for r in trainer.state.log_history if "loss" in r]


def test_dataset_and_collator_plug_into_trainer_with_loss_on_the_response_only(toy, tmp_path):
    index, text, seqs = toy
    ex = build_tasks(seqs, index, text, tasks=["seqrec"])[:8]
    tok = build_local_tokenizer([p + r for _, p, r in ex], vocab_size=150)
    model = tiny_llama(tok, hidden=32, layers=1)
    add_index_tokens(model, tok, {"0": index_tokens(3, 4)})
    tok.padding_side = "right"
    ds = LCRecDataset(ex, tok)
    batch = LCRecCollator(tok)([ds[i] for i in range(8)])
    # the loss the Trainer step minimises is the mean over response tokens only: recompute it by hand
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lab = batch["labels"][:, 1:]
    keep = lab != -100
    manual = torch.nn.functional.cross_entropy(logits[:, :-1][keep], lab[keep])
    n_resp = sum(len(tok(r, add_special_tokens=False)["input_ids"]) + 1 for _, _, r in ex)
    assert int(keep.sum()) == n_resp  # index tokens + EOS of every example, nothing of the prompts
    losses = _one_trainer(model, tok, ds, tmp_path, steps=1)
    assert losses == [pytest.approx(float(manual), rel=1e-4)]


def test_recommend_returns_existing_distinct_items(toy, tmp_path):
    index, text, seqs = toy
    ex = build_tasks(seqs, index, text, tasks=["seqrec", "item2index"])
    tok = build_local_tokenizer([p + r for _, p, r in ex], vocab_size=150)
    model = tiny_llama(tok, hidden=32, layers=1)
    add_index_tokens(model, tok, {"0": index_tokens(3, 4)})
    tok.padding_side = "right"
    losses = _one_trainer(model, tok, LCRecDataset(ex, tok), tmp_path, steps=20)
    assert sum(losses[-5:]) / 5 < losses[0]
    model.eval()
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
    res, unseen, top = evaluate(model, tok, index, [s[:-1] for s in seqs], torch.tensor([s[-1] for s in seqs]),
                                beams=6, batch_size=4, progress=False, k=6)
    assert set(res) == set(unseen) == {"HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10"}
    assert 0 <= res["HR@1"] <= res["HR@5"] <= res["HR@10"] <= 1 and top.shape == (len(seqs), 6)


def _chain(folder, num_items=200, num_users=200, length=8, seed=0):
    """Users walk a fixed successor chain (item i is always followed by i+1 mod N) from random starts.

    Item i's index spells i in base 8 (<a_i//64><b_i//8%8><c_i%8>): for a model trained from scratch the
    tokens are unrelated symbols, so the successor's index is a learned per-level table with a carry, which
    a small Llama picks up in a few hundred steps (random codes would ask it to memorise 200 three-token
    conjunctions, which takes far longer than a unit test has)."""
    from fastrec.data.semantic_index import save_index

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    inter = {str(u): [(s + t) % num_items for t in range(length)]
             for u, s in enumerate(rng.randrange(num_items) for _ in range(num_users))}
    (folder / "Chain.inter.json").write_text(json.dumps(inter))
    (folder / "Chain.item.json").write_text(json.dumps({str(i): {"title": f"gadget {i}"} for i in range(num_items)}))
    rows = [(i // 64, i // 8 % 8, i % 8) for i in range(num_items)]
    save_index(codes_to_index(torch.tensor(rows)), folder / "chain.index.json")
    return folder


STEPS = 300


def test_pipeline_learns_a_deterministic_successor_chain(tmp_path):
    """The proof that tokens, prompts, label masking and trie decoding fit together: when the next item is
    fully determined by the last, a small Llama tuned on seqrec ranks it first for >= 90% of test users."""
    from fastrec.recipes.lcrec import evaluate_run, train
    from fastrec.train import TrainConfig

    folder = _chain(tmp_path / "data")
    cfg = TrainConfig(device="cpu", lr=3e-3, batch_size=32, steps=STEPS, warmup_steps=10, seed=0, progress=False)
    res = train(folder, folder / "chain.index.json", tmp_path / "run", cfg, tasks=("seqrec",), hidden=64, layers=2,
                template="short", max_history=3, vocab_size=300)
    assert res["examples"] == {"seqrec": 200 * 5} and res["last_loss"] < res["first_loss"]
    ev = evaluate_run(tmp_path / "run", beams=10, batch_size=50, progress=False)
    assert ev["eval_users"] == 200 and not ev["sampled"]
    assert ev["metrics"]["HR@1"] >= 0.9, ev


def test_empty_texts_are_rejected_by_tasks_gracefully(toy):
    index, _, seqs = toy
    ex = build_tasks(seqs, index, {}, tasks=["index2item", "fusionseqrec"])
    assert all(r.startswith("item ") for _, _, r in ex)  # no title: the item id stands in, never ""


def _synthetic_run_inputs(tmp_path):
    from fastrec.data import synthetic
    from fastrec.data.semantic_index import save_index

    folder = synthetic(tmp_path / "data", num_users=40, num_items=30)
    rng = random.Random(0)
    rows = sorted({tuple(rng.randrange(8) for _ in range(3)) for _ in range(200)})[:30]
    save_index(codes_to_index(torch.tensor(rows)), tmp_path / "Synthetic.index.json")
    return folder, tmp_path / "Synthetic.index.json"


TINY = ["--hidden", "32", "--layers", "1", "--heads", "2", "--vocab-size", "300", "--device", "cpu", "--no-progress"]


def test_cli_train_eval_recommend_and_a_truncated_run(tmp_path, capsys):
    from fastrec.cli import main
    from fastrec.train import CheckpointError

    folder, index = _synthetic_run_inputs(tmp_path)
    run = tmp_path / "run"
    assert main(["lcrec", "train", "--data", str(folder), "--index", str(index), "--out", str(run), "--steps", "3",
                 "--batch-size", "4", "--tasks", "seqrec,item2index", "--task-caps", "item2index=5",
                 "--max-per-task", "0", *TINY]) == 0
    saved = json.loads((run / "model" / "lcrec.json").read_text())
    assert saved["examples"]["item2index"] == 5 and saved["steps"] == 3 and saved["tasks"] == ["seqrec", "item2index"]
    files = {p.name for p in (run / "model").iterdir()}
    assert {"model.safetensors", "config.json", "index.json", "manifest.json", "tokenizer"} <= files
    assert len([r for r in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in r]) == 3
    capsys.readouterr()
    assert main(["lcrec", "eval", "--run", str(run), "--eval-users", "8", "--beams", "4", "--no-progress"]) == 0
    assert "8 of 40 test users sampled (seed 0)" in capsys.readouterr().out
    res = json.loads((run / "eval" / "results.json").read_text())
    assert res["eval_users"] == 8 and res["sampled"] and set(res["metrics"]) == {"HR@1", "HR@5", "HR@10", "NDCG@5",
                                                                               "NDCG@10"}
    rows = [json.loads(r) for r in (run / "eval" / "top20.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["top"]) == len(set(r["top"])) <= 20 for r in rows)
    assert main(["lcrec", "recommend", "--run", str(run), "--user", rows[0]["user"], "--k", "3", "--beams", "4",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"top 3 for user {rows[0]['user']}:" and len(out) == 4 and all(": " in line for line in out[1:])
    with pytest.raises(ValueError, match="user"):
        main(["lcrec", "recommend", "--run", str(run), "--user", "nobody"])
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated"):
        main(["lcrec", "eval", "--run", str(run)])
    with pytest.raises(ValueError, match="lora"):
        main(["lcrec", "train", "--data", str(folder), "--index", str(index), "--out", str(run), "--lora", *TINY])
    with pytest.raises(ValueError, match="has 2 items but the data set has 30"):
        from fastrec.data.semantic_index import save_index

        save_index({"0": ["<a_1>"], "1": ["<a_2>"]}, tmp_path / "small.json")
        main(["lcrec", "train", "--data", str(folder), "--index", str(tmp_path / "small.json"), "--out", str(run)])


def test_lora_on_a_local_pretrained_model_trains_saves_and_evaluates(tmp_path):
    """--model PATH --lora: the adapter (with the resized embeddings) is what RUN/model holds, and eval
    rebuilds base + adapter from it."""
    pytest.importorskip("peft")
    from fastrec.recipes.lcrec import evaluate_run, load_run, local_tokenizer
    from fastrec.train import TrainConfig

    folder, index = _synthetic_run_inputs(tmp_path)
    tok = local_tokenizer(["the user has interacted with items widget title"] * 3, vocab_size=50)
    base = tiny_llama(tok, hidden=32, layers=1, heads=2)
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    from fastrec.recipes.lcrec import train

    cfg = TrainConfig(device="cpu", batch_size=4, steps=2, lr=1e-3, lora=True, lora_r=4, progress=False)
    res = train(folder, index, tmp_path / "run", cfg, model_path=str(tmp_path / "base"), tasks=("seqrec",))
    assert res["lora"] and res["model"] == str((tmp_path / "base").resolve())
    files = {p.name for p in (tmp_path / "run" / "model").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    model, tokenizer, _, _ = load_run(tmp_path / "run", device="cpu")
    assert type(model).__name__ == "PeftModelForCausalLM" and model.get_input_embeddings().weight.shape[0] == len(
        tokenizer) == len(tok) + 8 * 3
    ev = evaluate_run(tmp_path / "run", eval_users=4, beams=4, progress=False, device="cpu")
    assert ev["eval_users"] == 4


class _Kill(transformers.TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("killed")


def test_tuning_resumed_after_a_kill_ends_with_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    from fastrec.recipes.lcrec import train
    from fastrec.train import TrainConfig

    folder, index = _synthetic_run_inputs(tmp_path)
    kw = dict(tasks=("seqrec", "index2item"), hidden=32, layers=1, heads=2, vocab_size=300)

    def cfg(resume=None):
        return TrainConfig(device="cpu", batch_size=4, steps=6, save_every=2, lr=3e-3, warmup_steps=2, seed=0,
                           resume=resume, progress=False)

    train(folder, index, tmp_path / "full", cfg(), **kw)
    with pytest.raises(KeyboardInterrupt):
        train(folder, index, tmp_path / "part", cfg(), callbacks=[_Kill(5)], **kw)
    assert not (tmp_path / "part" / "model").exists()
    res = train(folder, index, tmp_path / "part", cfg(resume="latest"), **kw)
    assert res["resumed_from"].endswith("checkpoint-4") and res["steps"] == 6
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_tuning_on_two_gloo_processes_follows_the_single_process_loss_curve(tmp_path):
    """torchrun, 2 processes x batch 4 vs 1 process x batch 8 (same global batches; the Trainer averages the
    token loss over both processes): the logged losses agree to rtol 1e-4."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    folder, index = _synthetic_run_inputs(tmp_path)
    args = ["lcrec", "train", "--data", str(folder), "--index", str(index), "--steps", "4",
            "--tasks", "seqrec,item2index", *TINY]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    one = subprocess.run([sys.executable, "-m", "fastrec", *args, "--batch-size", "8", "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "fastrec", *args,
                          "--batch-size", "4", "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]

    def losses(run):
        return [json.loads(r)["loss"] for r in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in r]

    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == 4
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "two" / "model" / "lcrec.json").read_text())["world_size"] == 2


def test_cli_registers_lcrec():
    from fastrec.cli import build_parser

    args = build_parser().parse_args(["lcrec", "index", "--data", "D", "--rqvae-epochs", "3", "--encoder", "E",
                                      "--levels", "3", "--codes", "16", "--rqvae-batch", "64"])
    assert (args.stage, args.rqvae_epochs, args.encoder, args.levels, args.codes, args.rqvae_batch) == (
        "index", 3, "E", 3, 16, 64)
    assert args.func.__module__ == "fastrec.recipes.lcrec"
    args = build_parser().parse_args(["lcrec", "train", "--data", "D", "--index", "I", "--out", "R", "--lora",
                                      "--dtype", "bf16", "--grad-accum", "2", "--gradient-checkpointing"])
    assert args.lora and args.dtype == "bf16" and args.grad_accum == 2 and args.gradient_checkpointing
    args = build_parser().parse_args(["lcrec", "eval", "--run", "R"])
    assert args.eval_users is None and args.beams == 20  # every test user, 20 beams by default
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lcrec", "bogus", "--data", "D"])
    from fastrec.recipes.lcrec import _parse_caps

    assert _parse_caps("seqrec=0,item2index=7") == {"seqrec": None, "item2index": 7}
    with pytest.raises(ValueError, match="task-caps"):
        _parse_caps("nope=3")
