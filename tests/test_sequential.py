"""GRU4Rec and BERT4Rec beside SASRec: padding invariance, causality / bidirectionality, the cloze task,
learning a fixed successor, the pluggable fusion embedding (semantic-only included), bad input."""

import pytest
import torch

from fastrec.nn import BERT4Rec, GRU4Rec, IDEmbedding, SASRec, SemanticFusionEmbedding

BACKBONES = {"sasrec": SASRec, "gru4rec": GRU4Rec, "bert4rec": BERT4Rec}


def make(name, num_items=40, d=16, max_len=10, fusion=None):
    emb = SemanticFusionEmbedding(torch.randn(num_items, 24), d, mode=fusion) if fusion else None
    return BACKBONES[name](num_items, d=d, max_len=max_len, dropout=0.0, item_embedding=emb).eval()


@pytest.mark.parametrize("name", list(BACKBONES))
@pytest.mark.parametrize("fusion", [None, "gate", "semantic"])
def test_left_padding_does_not_change_the_user_vector(name, fusion):
    model = make(name, fusion=fusion)
    seqs = torch.tensor([[0, 0, 0, 5, 7, 9], [1, 2, 3, 4, 5, 6]])
    longer = torch.cat([torch.zeros(2, 3, dtype=torch.int64), seqs], 1)
    torch.testing.assert_close(model(longer), model(seqs), rtol=1e-4, atol=1e-5)
    alone = model(seqs[:1, 3:])  # the same history with no padding at all
    torch.testing.assert_close(alone[0], model(seqs)[0], rtol=1e-4, atol=1e-5)
    scores = model.scores(seqs)
    assert scores.shape == (2, 40) and torch.all(scores[:, 0] == float("-inf"))


def test_gru4rec_is_causal_and_bert4rec_is_bidirectional():
    seqs = torch.tensor([[0, 0, 3, 5, 7, 9]])
    changed = seqs.clone()
    changed[0, -1] = 11
    gru = make("gru4rec")
    torch.testing.assert_close(gru.encode(changed)[:, :-1], gru.encode(seqs)[:, :-1])
    assert torch.all(gru.encode(seqs)[0, :2] == 0)  # padding positions carry no state
    bert = make("bert4rec")
    assert not torch.allclose(bert.encode(changed)[:, 2], bert.encode(seqs)[:, 2])  # sees the future


def test_bert4rec_cloze_and_mask_token():
    model = make("bert4rec", max_len=8)
    model.mask_prob = 0.5
    seqs = torch.tensor([[0, 0, 0, 4, 5, 6, 7, 8], [0, 0, 0, 0, 0, 0, 0, 9], [1, 2, 3, 4, 5, 6, 7, 8]])
    inputs, labels = model.cloze(seqs, torch.Generator().manual_seed(0))
    masked = inputs == model.mask_id
    assert torch.equal(masked, labels != 0) and torch.equal(labels[masked], seqs[masked])
    assert torch.all(masked.any(1)) and not bool(masked[seqs == 0].any())  # >= 1 per row, never padding
    assert torch.equal(inputs[~masked], seqs[~masked])
    # inference appends a [mask]: a full-length history drops its oldest item to make room
    full = torch.randint(1, 40, (2, 8))
    torch.testing.assert_close(model(full), model.encode(torch.cat([full[:, 1:], torch.full((2, 1), 40)], 1))[:, -1])
    with pytest.raises(ValueError, match="mask_prob"):
        BERT4Rec(40, mask_prob=1.0)


def _successor_chains(items: int, rows: int, length: int, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences over items 1..items-1 where each item's successor is fixed, and their targets."""
    seqs = torch.randint(1, items, (rows, length), generator=generator)
    for i in range(1, length):
        seqs[:, i] = seqs[:, i - 1] % (items - 1) + 1
    return seqs, seqs % (items - 1) + 1


def _fit_accuracy(model, seqs: torch.Tensor, targets: torch.Tensor, lr: float, steps: int) -> float:
    """Adam for `steps` full-batch steps, then the share of sequences whose next item is ranked first."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model.loss(seqs, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float((model.scores(seqs).argmax(1) == targets[:, -1]).float().mean())


@pytest.mark.parametrize("name", list(BACKBONES))
def test_learns_a_fixed_successor(name):
    torch.manual_seed(0)
    model = BACKBONES[name](20, d=16, max_len=5, dropout=0.0, item_embedding=IDEmbedding(20, 16))
    seqs, targets = _successor_chains(20, 64, 5)
    assert _fit_accuracy(model, seqs, targets, lr=3e-2, steps=120) >= 0.9


@pytest.mark.parametrize("name", list(BACKBONES))
def test_bad_input(name):
    model = make(name)
    with pytest.raises(ValueError, match="L <= "):
        model(torch.ones(2, 11, dtype=torch.int64))
    with pytest.raises(ValueError, match="num_items must be"):
        BACKBONES[name](1)
    with pytest.raises(IndexError, match="out of range"):
        make(name, fusion="add")(torch.tensor([[1, 40]]))


def test_semantic_only_has_no_id_rows():
    sem = torch.randn(30, 12)
    emb = SemanticFusionEmbedding(sem, 4, mode="semantic", padding_idx=0)
    assert emb.id_embedding is None and not any("id_embedding" in k for k in emb.state_dict())
    ids = torch.tensor([[0, 3, 7]])
    want = torch.nn.functional.linear(sem[ids], emb.weight, emb.bias) * (ids != 0)[..., None]
    torch.testing.assert_close(emb(ids), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(emb.table()[1:], torch.nn.functional.linear(sem[1:], emb.weight, emb.bias),
                               rtol=1e-5, atol=1e-6)


def test_gru4rec_learns_from_small_init_id_rows():
    """IDs-only GRU4Rec at the tables' std-0.02 init: the input LayerNorm lets the GRU see the items at once
    (without it this reaches 0.14 after 60 steps; the hidden state then hardly depends on the input)."""
    torch.manual_seed(0)
    model = GRU4Rec(500, d=32, max_len=8, dropout=0.0, item_embedding=IDEmbedding(500, 32))
    seqs, targets = _successor_chains(500, 256, 8, torch.Generator().manual_seed(1))
    assert _fit_accuracy(model, seqs, targets, lr=5e-3, steps=60) >= 0.9


def test_gru4rec_checkpoint_from_before_the_input_norm_loads_as_trained():
    torch.manual_seed(0)
    old = GRU4Rec(30, d=8, max_len=6, dropout=0.0)
    old.norm = torch.nn.Identity()  # what a checkpoint saved before the norm was trained as
    state = old.state_dict()
    assert not any(k.startswith("norm.") for k in state)
    new = GRU4Rec(30, d=8, max_len=6, dropout=0.0)
    with pytest.warns(UserWarning, match="no input LayerNorm"):
        new.load_state_dict(state)
    seqs = torch.randint(0, 30, (4, 6))
    torch.testing.assert_close(new.eval().encode(seqs), old.eval().encode(seqs))
    again = GRU4Rec(30, d=8, max_len=6, dropout=0.0)
    again.load_state_dict(GRU4Rec(30, d=8, max_len=6, dropout=0.0).state_dict())  # current checkpoints: no warning
    assert isinstance(again.norm, torch.nn.LayerNorm)
