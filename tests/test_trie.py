"""trie_mask against the reference (C++, Triton interpreter), autograd/opcheck/compile, bad input, and
ItemTrieLogitsProcessor inside HF generate() with beam search, left padding and batches."""

import os
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastrec import reference
from fastrec.ops import build_trie, check_trie, trie_mask

NEG = float("-inf")

# CPU tensors through the Triton kernels: only under the interpreter (set without a GPU); on a GPU the
# cuda-marked tests run the same kernels in their GPU block sizes.
INTERPRETER_ONLY = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                      reason="needs TRITON_INTERPRET=1 (no GPU)")



def random_trie(n_items=50, levels=3, codes=6, offset=10, seed=0, end=(1,), pad=(2,)):
    rng = random.Random(seed)
    seqs = [[offset + lv * codes + rng.randrange(codes) for lv in range(levels)] for _ in range(n_items)]
    return seqs, build_trie(seqs, end, pad)


def random_generated(seqs, rows, depth, vocab, seed=0):
    """Rows that follow items (prefixes of length `depth`), some then EOS, some off the trie."""
    rng = random.Random(seed)
    out = []
    for r in range(rows):
        s = list(rng.choice(seqs)) + [1, 2, 1, 2, 1, 2]
        row = s[:depth]
        if r % 5 == 4 and depth:
            row[rng.randrange(depth)] = rng.randrange(vocab)  # may leave the trie
        out.append(row)
    return torch.tensor(out, dtype=torch.int64).reshape(rows, depth)


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4, 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference(depth, dtype, on_device):
    seqs, trie = random_trie()
    scores = torch.randn(37, 41).to(dtype)
    gen = random_generated(seqs, 37, depth, 41)
    got = trie_mask(scores, gen, *trie)
    want = reference.trie_mask(scores, gen, *trie, NEG)
    assert got.dtype == dtype and torch.equal(got, want)
    assert torch.equal(trie_mask(scores, gen.int(), *trie), want)


def test_semantics_by_hand(on_device):
    seqs = [[5, 6, 7], [5, 8, 7], [9, 6, 7]]
    trie = build_trie(seqs, end_tokens=[0])
    scores = torch.arange(10, dtype=torch.float32).repeat(6, 1)
    gen = torch.tensor([[3, 3, 3, 3], [5, 3, 3, 3], [5, 8, 3, 3], [5, 8, 7, 3], [5, 8, 7, 0], [9, 9, 9, 9]])
    allowed = [set(), None, None, None, None, set()]
    out = trie_mask(scores, gen[:, :0], *trie)
    assert set(torch.nonzero(out[0] > NEG).flatten().tolist()) == {5, 9}
    for depth, want in [(1, {6, 8}), (2, {7}), (3, {0}), (4, {0})]:
        row = [None, 1, 2, 3, 4][depth]
        out = trie_mask(scores, gen[:, :depth], *trie)
        assert set(torch.nonzero(out[row] > NEG).flatten().tolist()) == want
        assert torch.equal(out[row][out[row] > NEG], scores[row][out[row] > NEG])
    out = trie_mask(scores, gen, *trie)
    assert allowed[0] == set(torch.nonzero(out[0] > NEG).flatten().tolist())  # 3 leaves the trie: nothing
    assert bool((out[5] == NEG).all())


def test_duplicates_share_a_path_and_ends_loop(on_device):
    indptr, tokens, children = build_trie([[4, 5], [4, 5], [4, 6]], end_tokens=[1], pad_tokens=[2])
    # root, 4, 4-5, 4-6, end
    assert indptr.numel() - 1 == 5
    scores = torch.zeros(1, 8)
    for tail in ([4, 5, 1, 2, 1], [4, 6, 1, 2]):
        out = trie_mask(scores, torch.tensor([tail]), indptr, tokens, children)
        assert set(torch.nonzero(out[0] == 0).flatten().tolist()) == {1, 2}
    out = trie_mask(scores, torch.tensor([[4, 5]]), indptr, tokens, children)
    assert set(torch.nonzero(out[0] == 0).flatten().tolist()) == {1}  # only EOS after a complete index
    out = trie_mask(scores, torch.tensor([[4, 5, 2]]), indptr, tokens, children)
    assert bool((out == NEG).all())  # pad straight after an index is not an ending


def test_tokens_beyond_vocab_are_never_written(on_device):
    indptr, tokens, children = build_trie([[3], [50]])
    out = torch.ops.fastrec.trie_mask(torch.zeros(2, 10), torch.zeros(2, 0, dtype=torch.long),
                                      indptr, tokens, children, NEG)
    assert set(torch.nonzero(out[0] == 0).flatten().tolist()) == {3}
    with pytest.raises(IndexError, match="tokens must lie"):
        trie_mask(torch.zeros(2, 10), torch.zeros(2, 0, dtype=torch.long), indptr, tokens, children)


def test_empty_and_fill(on_device):
    _, trie = random_trie()
    assert trie_mask(torch.zeros(0, 40), torch.zeros(0, 2, dtype=torch.long), *trie).shape == (0, 40)
    out = trie_mask(torch.ones(2, 40), torch.zeros(2, 0, dtype=torch.long), *trie, fill=-7.0)
    assert set(out.flatten().tolist()) == {1.0, -7.0}


def test_gradient_passes_only_allowed_tokens(on_device):
    seqs, trie = random_trie()
    scores = torch.randn(9, 41, requires_grad=True)
    gen = random_generated(seqs, 9, 2, 41)
    out = trie_mask(scores, gen, *trie, fill=0.0)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * g).sum(), scores)
    ref = reference.trie_mask(scores.detach(), gen, *trie, 0.0)
    allowed = ref != 0
    torch.testing.assert_close(grad, torch.where(allowed, g, torch.zeros_like(g)))


def test_opcheck_and_compile(on_device):
    seqs, trie = random_trie()
    scores = torch.randn(7, 41, requires_grad=True)
    gen = random_generated(seqs, 7, 2, 41)
    torch.library.opcheck(torch.ops.fastrec.trie_mask.default, (scores, gen, *trie, -1e4))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(scores, gen, indptr, tokens, children):
        return trie_mask(scores, gen, indptr, tokens, children, fill=-1e4, validate=False).softmax(-1)

    torch.testing.assert_close(f(scores, gen, *trie), reference.trie_mask(scores, gen, *trie, -1e4).softmax(-1))


@INTERPRETER_ONLY
def test_triton_kernel_under_interpreter():
    pytest.importorskip("triton")
    from fastrec.kernels import trie as tk

    seqs, trie = random_trie(n_items=200, codes=40)
    for depth in (0, 2, 3, 4):
        scores = torch.randn(11, 150)
        gen = random_generated(seqs, 11, depth, 150, seed=depth)
        assert torch.equal(tk.trie_mask(scores, gen, *trie, NEG), reference.trie_mask(scores, gen, *trie, NEG))
    bf = torch.randn(3, 150).bfloat16()
    gen = random_generated(seqs, 3, 1, 150)
    assert torch.equal(tk.trie_mask(bf, gen, *trie, NEG), reference.trie_mask(bf, gen, *trie, NEG))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_items=st.integers(1, 40), levels=st.integers(1, 4), codes=st.integers(1, 9), rows=st.integers(0, 12),
       depth=st.integers(0, 6), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
       seed=st.integers(0, 10_000))
def test_property_against_reference(n_items, levels, codes, rows, depth, dtype, seed, on_device):
    seqs, trie = random_trie(n_items, levels, codes, offset=3, seed=seed)
    vocab = 3 + levels * codes + 2  # the last codes sit on the vocabulary boundary
    check_trie(*trie, vocab_size=vocab)
    scores = torch.randn(rows, vocab, generator=torch.Generator(torch.get_default_device()).manual_seed(seed)).to(dtype)
    gen = random_generated(seqs, rows, depth, vocab, seed=seed)
    assert torch.equal(trie_mask(scores, gen, *trie), reference.trie_mask(scores, gen, *trie, NEG))


def _trie():
    return build_trie([[3, 4], [3, 5]], [1])


BAD = [
    (lambda: trie_mask(torch.zeros(2, 9, 1), torch.zeros(2, 0, dtype=torch.long), *_trie()), ValueError,
     "scores must be 2-D"),
    (lambda: trie_mask(torch.zeros(2, 9), torch.zeros(3, 0, dtype=torch.long), *_trie()), ValueError,
     "generated has 3 rows"),
    (lambda: trie_mask(torch.zeros(2, 9), torch.zeros(2, 1), *_trie()), ValueError, "generated must have"),
    (lambda: trie_mask(torch.zeros(2, 9, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long), *_trie()),
     ValueError, "scores must have"),
    (lambda: trie_mask(torch.zeros(2, 9), torch.zeros(2, 0, dtype=torch.long), torch.tensor([0]),
                       torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)), ValueError, "indptr"),
    (lambda: trie_mask(torch.zeros(2, 9), torch.zeros(2, 0, dtype=torch.long), torch.tensor([0, 3, 2]),
                       torch.tensor([3, 4]), torch.tensor([1, 1])), ValueError, "indptr must"),
    (lambda: trie_mask(torch.zeros(2, 9), torch.zeros(2, 0, dtype=torch.long), torch.tensor([0, 2, 2]),
                       torch.tensor([4, 3]), torch.tensor([1, 1])), ValueError, "sorted"),
    (lambda: trie_mask(torch.zeros(2, 9), torch.zeros(2, 0, dtype=torch.long), torch.tensor([0, 2, 2]),
                       torch.tensor([3, 4]), torch.tensor([1, 7])), IndexError, "children"),
    (lambda: trie_mask(torch.zeros(2, 9), torch.zeros(2, 0, dtype=torch.long), torch.tensor([0, 1, 1]),
                       torch.tensor([3, 4]), torch.tensor([1])), ValueError, "children has 1"),
    (lambda: trie_mask(torch.zeros(2, 9), torch.zeros(2, 0, dtype=torch.long), torch.tensor([0, 1, 1]).int(),
                       torch.tensor([3]), torch.tensor([1])), ValueError, "indptr must have dtype"),
    (lambda: build_trie([[3, -1]]), ValueError, "negative"),
    (lambda: build_trie([[3, 1]], end_tokens=[1]), ValueError, "end/pad token 1"),
]


@pytest.mark.parametrize("call,exc,match", BAD)
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_kernel_rejects_malformed_indptr_itself():
    with pytest.raises(ValueError, match="indptr"):
        torch.ops.fastrec.trie_mask(torch.zeros(1, 9), torch.zeros(1, 0, dtype=torch.long),
                                    torch.tensor([0, 5]), torch.tensor([3]), torch.tensor([0]), NEG)


# ----------------------------------------------------------------------------------------------- generate()
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_lm():
    from fastrec.data.semantic_index import index_tokens
    from fastrec.integrations import build_local_tokenizer

    texts = ["a small lab caliper for measuring parts", "the user bought these items in order"] * 20
    tok = build_local_tokenizer(texts, vocab_size=200, extra_tokens=index_tokens(3, 8))
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                      max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    rng = random.Random(1)
    index = {str(i): [f"<{'abc'[lv]}_{rng.randrange(8)}>" for lv in range(3)] for i in range(40)}
    index["40"] = list(index["7"])  # a duplicate: one index, two items
    return tok, model, index


def _generate(model, tok, prompts, beams, processors=(), fn=None, max_new_tokens=4):
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model.generate(**batch, num_beams=beams, num_return_sequences=beams, do_sample=False,
                              max_new_tokens=max_new_tokens, logits_processor=list(processors),
                              prefix_allowed_tokens_fn=fn, output_scores=True, return_dict_in_generate=True,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id), batch


def dict_trie_fn(index, tok, prompt_len):
    """The plain-Python peer: a nested-dict trie walked by prefix_allowed_tokens_fn."""
    vocab = tok.get_vocab()
    root: dict = {}
    for tokens in index.values():
        node = root
        for t in tokens:
            node = node.setdefault(vocab[t], {})
    end = [tok.eos_token_id, tok.pad_token_id]

    def fn(batch_id, ids):
        node = root
        for t in ids[prompt_len:].tolist():
            if t in end:
                return end
            node = node.get(t)
            if node is None:
                return []
        return list(node) or [tok.eos_token_id]

    return fn


@pytest.mark.parametrize("device_check", [None, True], ids=["host-check", "device-check"])
@pytest.mark.parametrize("beams", [1, 4, 10])
def test_generate_spells_existing_items_and_equals_python_trie(tiny_lm, beams, device_check):
    from fastrec.integrations import ItemTrieLogitsProcessor

    tok, model, index = tiny_lm
    prompts = ["the user bought", "a small lab caliper for measuring parts in order", "items"]
    proc = ItemTrieLogitsProcessor(index, tok, device_check=device_check)
    out, batch = _generate(model, tok, prompts, beams, [proc])
    plen = batch["input_ids"].shape[1]
    items = proc.decode(out.sequences)
    assert len(items) == len(prompts) * beams
    assert all(len(i) >= 1 for i in items), "a generated sequence is not an existing item"
    assert [3 in i or 7 in i or True for i in items]
    peer, _ = _generate(model, tok, prompts, beams, fn=dict_trie_fn(index, tok, plen))
    assert torch.equal(out.sequences, peer.sequences)
    if beams > 1:
        torch.testing.assert_close(out.sequences_scores, peer.sequences_scores)
    # left padding really happened, and a reused processor (new prompts, new batch size) is still exact
    assert bool((batch["input_ids"][:, 0] == tok.pad_token_id).any())
    out2, _ = _generate(model, tok, prompts[:1], beams, [proc])
    assert all(proc.decode(out2.sequences))


def test_unconstrained_generation_would_leave_the_trie(tiny_lm):
    from fastrec.integrations import ItemTrieLogitsProcessor

    tok, model, index = tiny_lm
    proc = ItemTrieLogitsProcessor(index, tok)
    out, batch = _generate(model, tok, ["the user bought"], 10)
    assert not all(proc.decode(out.sequences, batch["input_ids"].shape[1]))


def test_fifty_beams_and_duplicates(tiny_lm):
    from fastrec.integrations import ItemTrieLogitsProcessor

    tok, model, index = tiny_lm
    proc = ItemTrieLogitsProcessor(index, tok)
    out, _ = _generate(model, tok, ["the user bought", "items"], 50, [proc], max_new_tokens=6)
    items = proc.decode(out.sequences)
    assert all(items), "every returned sequence, even a filler beam, is an existing item"
    # HF gives beams that ran out of continuations a score near -1e9; the others are distinct items
    scores = out.sequences_scores.view(2, 50)
    for b in range(2):
        seqs = [tuple(i) for i, s in zip(items[b * 50:(b + 1) * 50], scores[b].tolist(), strict=True) if s > -1e6]
        assert len(seqs) == len(set(seqs)) == len({tuple(v) for v in index.values()})  # all 38 distinct indices
    vocab = tok.get_vocab()
    assert proc.items([vocab[t] for t in index["7"]] + [tok.eos_token_id]) == [7, 40]
    assert proc.items([vocab[t] for t in index["7"][:2]]) == []


def test_processor_tells_a_new_generation_on_the_device_without_a_host_sync(tiny_lm, device, no_sync_ops,
                                                                            cuda_syncs_raise):
    """A new prompt exactly one token longer than the last call looks like a continuation by its shape; the
    processor checks the prompt on the device (no syncing op on the CPU, sync-debug "error" on CUDA: the check
    picks the root mask there) and the host learns it at the next call, whose mask then continues the new
    prompt."""
    from fastrec.integrations import ItemTrieLogitsProcessor

    tok, _, index = tiny_lm
    vocab, v = tok.get_vocab(), len(tok)
    first = [vocab[t] for t in index["7"]]
    # the device check is the default off the CPU; here it is asked for on the CPU too
    proc = ItemTrieLogitsProcessor(index, tok, device_check=True if device.type == "cpu" else None)

    def want(generated):
        return trie_mask(torch.zeros(2, v), torch.tensor(generated, dtype=torch.long).view(2, -1), *proc.trie)

    a = torch.tensor([[5, 6, 7], [5, 6, 8]], device=device)
    b = torch.tensor([[9, 9, 9, 9, 9], [9, 9, 9, 9, 8]], device=device)  # a new prompt of 3 + 2 tokens
    step = torch.full((2, 1), first[0], device=device)
    scores = torch.zeros(2, v, device=device)
    assert torch.equal(proc(a, scores).cpu(), want([[], []]))  # first call: uploads the trie (outside)
    with no_sync_ops() if device.type == "cpu" else cuda_syncs_raise():
        got = [proc(torch.cat([a, step], 1), scores),  # continues a
               proc(b, scores),  # shaped like a's next step, but a new prompt
               proc(torch.cat([b, step], 1), scores)]  # continues b
    assert torch.equal(got[0].cpu(), want([first[:1]] * 2))
    assert torch.equal(got[1].cpu(), want([[], []]))
    assert torch.equal(got[2].cpu(), want([first[:1]] * 2))
    assert proc.prompt_length(torch.cat([b, step, step], 1)) == 5


@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32])
def test_restart_edge_walks_a_row_to_the_root_and_never_shows(on_device, id_dtype):
    """The processor's device copies of the trie have a root edge on RESTART_TOKEN back to the root (its device
    check's way to give a new generation's mask with one trie_mask call): a row of that token gets the root's
    mask at any depth, every other row the plain trie's, and the edge's token is never written."""
    from fastrec.integrations.hf import RESTART_TOKEN, with_restart_edge

    seqs, trie = random_trie(seed=3)
    restart = with_restart_edge(*trie)
    check_trie(*restart)  # still a valid trie: the root's tokens stay sorted
    assert restart[0].numel() == trie[0].numel() and restart[1].numel() == trie[1].numel() + 1
    scores = torch.randn(37, 41)
    root = trie_mask(scores, torch.zeros(37, 0, dtype=id_dtype), *trie)
    for depth in (1, 3, 6):
        gen = random_generated(seqs, 37, depth, 41, seed=depth).to(id_dtype)
        gen[::3] = RESTART_TOKEN
        want = trie_mask(scores, gen, *trie)
        assert bool((want[::3] == NEG).all())  # the plain trie has no such edge: those rows are dead
        want[::3] = root[::3]
        assert torch.equal(trie_mask(scores, gen, *restart, validate=False), want)


def test_processor_bad_input(tiny_lm):
    from fastrec.integrations import ItemTrieLogitsProcessor

    tok, model, index = tiny_lm
    with pytest.raises(ValueError, match="does not know"):
        ItemTrieLogitsProcessor({"0": ["<z_1>"]}, tok)
    with pytest.raises(ValueError, match="non-empty"):
        ItemTrieLogitsProcessor({}, tok)
    with pytest.raises(ValueError, match="device_check"):
        ItemTrieLogitsProcessor(index, tok, device_check="yes")
    proc = ItemTrieLogitsProcessor(index, tok)
    with pytest.raises(ValueError, match="resize the embeddings"):
        proc(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 50))


def test_real_index_with_duplicates_maps_one_index_to_several_items(shared_data):
    from fastrec.data.semantic_index import collision_groups, index_to_codes, index_tokens, load_index
    from fastrec.integrations import ItemTrieLogitsProcessor, build_local_tokenizer

    index = load_index(shared_data / "amazon-scientific" / "indexes" / "rqvae_native" / "Scientific.index.json")
    tok = build_local_tokenizer(["item"] * 3, vocab_size=50, extra_tokens=index_tokens(4, 256))
    proc = ItemTrieLogitsProcessor(index, tok)
    groups = collision_groups(index_to_codes(index))
    assert len(proc.items_of) == 4344 - sum(len(g) - 1 for g in groups)
    vocab = tok.get_vocab()
    for group in groups[:20]:
        assert proc.items([vocab[t] for t in index[str(group[0])]]) == group
    # walking every item's tokens through the op reaches exactly EOS
    gen = torch.tensor([[vocab[t] for t in index[str(i)]] for i in range(0, 4344, 97)])
    out = trie_mask(torch.zeros(len(gen), len(tok)), gen, *proc.trie)
    assert bool((out[:, tok.eos_token_id] == 0).all()) and int((out == 0).sum()) == len(gen)
