"""Benchmark cases of the collaborative-token family (SeLLa-Rec inputs_embeds).

B = 16 prompts of T = 256 tokens with <User_ID>, <Item_ID>, <Warm_ID> once each, vocabulary 32,000,
MF d = 256, user/item projection Linear(256 -> 1024) -> GELU -> Linear(1024 -> H), warm Linear(H -> H).
Peers, in the same run: torch eager (``e = embed(ids); e[ids == p] = proj(table[ids_p])`` per type), the
original code's per-sample loop (nonzero per sample, one row write at a time), and the allocation of a new
output plus one copy of its bytes (the memory-traffic bound of any op returning a fresh inputs_embeds; on
this CPU the first-touch page faults of the 33 MB output cost more than the copy itself). Forward alone,
and forward + backward into the projections (token table frozen, as under LoRA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastrec.bench.core import Case
from fastrec.ops import collab_inputs_embeds, splice_collab_tokens
from fastrec.ops.collab import project_rows

B, T, V, D, MID = 16, 256, 32_000, 256, 1024


def prompts_with_slots(b: int, t: int, h: int, vocab: int, dtype: torch.dtype, g: torch.Generator
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [b, t], placeholder ids [3], token table [vocab, h]): the last three ids are the placeholders,
    each once per prompt at a random position (the CPU and GPU benches draw their prompts from this)."""
    ph = torch.tensor([vocab - 3, vocab - 2, vocab - 1])
    ids = torch.randint(0, vocab - 3, (b, t), generator=g)
    for row in range(b):
        ids[row, torch.randperm(t, generator=g)[:3]] = ph
    return ids, ph, (torch.randn(vocab, h, generator=g) * 0.02).to(dtype)


def _inputs(h: int, dtype: torch.dtype, grad: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    ids, ph, weight = prompts_with_slots(B, T, h, V, dtype, g)
    n_users, n_items = 6000, 4000
    tables = [torch.randn(n_users, D, generator=g).to(dtype), torch.randn(n_items, D, generator=g).to(dtype),
              torch.randn(n_items, h, generator=g).to(dtype)]

    def lin(o, i):
        return [(torch.randn(o, i, generator=g) / i**0.5).to(dtype).requires_grad_(grad),
                torch.zeros(o, dtype=dtype).requires_grad_(grad)]

    projs = [(*lin(MID, D), *lin(h, MID)), (*lin(MID, D), *lin(h, MID)), tuple(lin(h, h))]
    slot_ids = [torch.randint(0, n_users, (B,), generator=g), torch.randint(0, n_items, (B,), generator=g)]
    slot_ids.append(slot_ids[1].clone())
    return {"ids": ids, "weight": weight, "ph": ph, "tables": tables, "projs": projs, "slot_ids": slot_ids,
            "grad": torch.randn(B, T, h, generator=g).to(dtype) if grad else None,
            "copy_src": torch.empty(B * T, h, dtype=dtype).normal_()}


def fastrec_embeds(i: dict) -> torch.Tensor:
    return collab_inputs_embeds(i["ids"], i["weight"], i["ph"], i["slot_ids"], i["tables"], i["projs"])


def eager_embeds(i: dict) -> torch.Tensor:
    """What SeLLa-Rec-style code writes with masks: embed everything, then overwrite per slot type."""
    e = F.embedding(i["ids"], i["weight"])
    for p, ids, table, proj in zip(i["ph"].tolist(), i["slot_ids"], i["tables"], i["projs"], strict=True):
        e[i["ids"] == p] = project_rows(table[ids], proj)
    return e


def loop_embeds(i: dict) -> torch.Tensor:
    """The original code: embed, nonzero per sample, write each placeholder row in a Python loop."""
    e = F.embedding(i["ids"], i["weight"])
    values = [project_rows(table[ids], proj) for ids, table, proj in zip(i["slot_ids"], i["tables"], i["projs"],
                                                                         strict=True)]
    for b in range(e.shape[0]):
        for s, p in enumerate(i["ph"].tolist()):
            for k, t in enumerate((i["ids"][b] == p).nonzero().flatten().tolist()):
                e[b, t] = values[s][b + k]
    return e


def copy_bound(i: dict) -> torch.Tensor:
    """A new output-sized tensor filled by one copy: what any op returning inputs_embeds must at least do."""
    return torch.empty_like(i["copy_src"]).copy_(i["copy_src"])


def _fwd_bwd(fn):
    def run(i: dict):
        out = fn(i)
        out.backward(i["grad"])
        return None

    return run


def _splice_inputs(h: int, dtype: torch.dtype, grad: bool) -> dict:
    i = _inputs(h, dtype, False)
    g = torch.Generator().manual_seed(1)
    i["values"] = torch.randn(3 * B, h, generator=g).to(dtype).requires_grad_(grad)
    i["mask"] = torch.isin(i["ids"], i["ph"])
    i["grad"] = torch.randn(B, T, h, generator=g).to(dtype) if grad else None
    return i


def splice_eager(i: dict) -> torch.Tensor:
    e = F.embedding(i["ids"], i["weight"])
    e[torch.isin(i["ids"], i["ph"])] = i["values"]
    return e


def splice_loop(i: dict) -> torch.Tensor:
    e = F.embedding(i["ids"], i["weight"])
    k = 0
    for b in range(e.shape[0]):
        for t in torch.isin(i["ids"][b], i["ph"]).nonzero().flatten().tolist():
            e[b, t] = i["values"][k]
            k += 1
    return e


def splice_cases() -> list[Case]:
    """The splice alone (slot rows given): what the fused kernel itself replaces."""
    out = []
    for h in (2048, 4096):
        for backward in (False, True):
            wrap = _fwd_bwd if backward else (lambda f: lambda i: (torch.no_grad()(f))(i))
            impls = {"fastrec": wrap(lambda i: splice_collab_tokens(i["ids"], i["weight"], i["ph"], i["values"])),
                     "torch eager (mask)": wrap(splice_eager), "original per-sample loop": wrap(splice_loop),
                     "new output + copy (bound)": copy_bound}
            targets = {"new output + copy (bound)": 0.5} if not backward else {}
            out.append(Case("splice_collab_tokens" + (" fwd+bwd" if backward else " fwd"), f"B={B} T={T} H={h} float32",
                            lambda h=h, backward=backward: _splice_inputs(h, torch.float32, backward), impls, targets,
                            quick=h == 2048 and not backward))
    return out


def cases(quick: bool = False) -> list[Case]:
    out = splice_cases()
    for h in (2048, 4096):
        for dtype in (torch.float32, torch.bfloat16):
            for backward in (False, True):
                wrap = _fwd_bwd if backward else (lambda f: lambda i: (torch.no_grad()(f))(i))
                impls = {
                    "fastrec": wrap(fastrec_embeds),
                    "torch eager (mask)": wrap(eager_embeds),
                    "original per-sample loop": wrap(loop_embeds),
                    "new output + copy (bound)": copy_bound,
                }
                main = h == 2048 and dtype == torch.float32
                targets = {"torch eager (mask)": 2.4 if backward else 3.0} if main else {}
                if main and not backward:
                    targets["new output + copy (bound)"] = 0.5  # within 2x of the memory bound
                name = "collab_inputs_embeds" + (" fwd+bwd" if backward else " fwd")
                dt = str(dtype).replace("torch.", "")
                out.append(Case(name, f"B={B} T={T} H={h} {dt}",
                                lambda h=h, dtype=dtype, backward=backward: _inputs(h, dtype, backward),
                                impls, targets, quick=main and not backward))
    return out
