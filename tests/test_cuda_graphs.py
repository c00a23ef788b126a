"""CUDA-only: CUDA-graph capture and replay of the splice, fusion and LightGCN forwards, no host sync with
validate=False, and the Triton kernels in their GPU block configurations. All skip without a GPU."""

import pytest
import torch

from fastrec import reference
from fastrec.ops import (
    collab_inputs_embeds,
    lightgcn_propagate,
    nearest_code,
    residual_encode,
    semantic_fusion_lookup,
    splice_collab_rows,
    splice_collab_tokens,
    spmm,
)

pytestmark = pytest.mark.cuda


def _capture(fn):
    """Warm `fn` up on a side stream (Triton compiles, the allocator settles), then capture it once."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def _splice_inputs(device):
    ids = torch.tensor([[5, 1, 6, 5, 2], [6, 2, 5, 3, 6]], device=device)
    weight = torch.randn(9, 33, device=device, dtype=torch.bfloat16)
    ph = torch.tensor([5, 6], device=device)
    values = [torch.randn(3, 33, device=device, dtype=torch.bfloat16),
              torch.randn(3, 33, device=device, dtype=torch.bfloat16)]
    return ids, weight, ph, values


def test_splice_rows_with_type_counts_capture_and_replay(cuda_device):
    ids, weight, ph, values = _splice_inputs(cuda_device)
    graph, out = _capture(lambda: splice_collab_rows(ids, weight, ph, values, validate=False))
    for _ in range(2):
        for v in values:
            v.copy_(torch.randn_like(v))
        graph.replay()
        want, _ = reference.splice_collab_tokens(ids.cpu(), weight.cpu(), ph.cpu(), torch.cat(values).cpu(), [3, 3])
        torch.testing.assert_close(out.cpu(), want)


def test_splice_validate_false_never_syncs(cuda_device, cuda_syncs_raise):
    ids, weight, ph, values = _splice_inputs(cuda_device)
    splice_collab_tokens(ids, weight, ph, torch.cat(values), validate=False)  # warm-up (Triton compile)
    torch.cuda.synchronize()
    with cuda_syncs_raise():
        splice_collab_tokens(ids, weight, ph, torch.cat(values), validate=False)
        splice_collab_rows(ids, weight, ph, values, validate=False)


def _splice_training_inputs(device):
    """Every splice op's inputs with their float leaves requiring grad: 3 placeholder types, 3/3/2 occurrences."""
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[5, 1, 6, 5, 2, 7], [6, 2, 5, 3, 6, 7]])
    ph, counts = torch.tensor([5, 6, 7]), [3, 3, 2]
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    c = dict(w=rnd(9, 33), vals=rnd(8, 33), per_type=[rnd(n, 33) for n in counts],
             tables=[rnd(6, 4) for _ in counts], projs=[(rnd(10, 4), rnd(10), rnd(33, 10), rnd(33)),
                                                        (rnd(33, 4), None), (rnd(33, 4), rnd(33))],
             slot_ids=[torch.randint(0, 6, (n,), generator=g) for n in counts], grad=rnd(2, 6, 33))
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    out = {k: ([move(t) for t in v] if isinstance(v, list) and k != "projs" else move(v) if k != "projs" else v)
           for k, v in c.items()}
    out["projs"] = [tuple(move(t) for t in p) for p in c["projs"]]
    out.update(ids=ids.to(device), ph=ph.to(device), counts=counts)
    for t in [out["w"], out["vals"], *out["per_type"], *out["tables"], *_proj_leaves(out)]:
        t.requires_grad_(True)
    return out


def _proj_leaves(c):
    return [x for p in c["projs"] for x in p if x is not None]


def _every_splice_step(c):
    """Forward and backward of splice_collab_tokens, splice_collab_rows and collab_inputs_embeds, plus the
    no-grad collab_inputs_embeds (the fused Triton projection), all with validate=False."""
    w, grad = c["w"], c["grad"]
    out1 = splice_collab_tokens(c["ids"], w, c["ph"], c["vals"], validate=False)
    g1 = torch.autograd.grad(out1, (w, c["vals"]), grad)
    out2 = splice_collab_rows(c["ids"], w, c["ph"], c["per_type"], validate=False)
    g2 = torch.autograd.grad(out2, (w, *c["per_type"]), grad)
    leaves = [w, *c["tables"], *_proj_leaves(c)]
    out3 = collab_inputs_embeds(c["ids"], w, c["ph"], c["slot_ids"], c["tables"], c["projs"], validate=False)
    g3 = torch.autograd.grad(out3, leaves, grad)
    with torch.no_grad():
        out4 = collab_inputs_embeds(c["ids"], w, c["ph"], c["slot_ids"], c["tables"], c["projs"], validate=False)
    return [out1, out2, out3, out4, *g1, *g2, *g3]


def _every_splice_reference(c):
    w = c["w"].detach().cpu().requires_grad_(True)
    vals = c["vals"].detach().cpu().requires_grad_(True)
    per_type = [t.detach().cpu().requires_grad_(True) for t in c["per_type"]]
    tables = [t.detach().cpu().requires_grad_(True) for t in c["tables"]]
    projs = [tuple(None if t is None else t.detach().cpu().requires_grad_(True) for t in p) for p in c["projs"]]
    ids, ph, grad, slot_ids = c["ids"].cpu(), c["ph"].cpu(), c["grad"].cpu(), [t.cpu() for t in c["slot_ids"]]
    ref1 = reference.splice_collab_tokens(ids, w, ph, vals)[0]
    ref2 = reference.splice_collab_tokens(ids, w, ph, torch.cat(per_type), c["counts"])[0]
    ref3 = reference.collab_inputs_embeds(ids, w, ph, slot_ids, tables, projs)
    g1 = torch.autograd.grad(ref1, (w, vals), grad)
    g2 = torch.autograd.grad(ref2, (w, *per_type), grad)
    g3 = torch.autograd.grad(ref3, [w, *tables, *[x for p in projs for x in p if x is not None]], grad)
    return [ref1, ref2, ref3, ref3, *g1, *g2, *g3]


def _assert_close_all(got, want):
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), rtol=1e-4, atol=1e-4)


def test_every_splice_forward_backward_validate_false_never_syncs(cuda_device, cuda_syncs_raise):
    c = _splice_training_inputs(cuda_device)
    _every_splice_step(c)  # warm-up: Triton compiles and autotunes (which syncs)
    torch.cuda.synchronize()
    with cuda_syncs_raise():
        got = _every_splice_step(c)
    _assert_close_all(got, _every_splice_reference(c))


def test_every_splice_forward_backward_capture_and_replay(cuda_device):
    c = _splice_training_inputs(cuda_device)
    graph, outs = _capture(lambda: _every_splice_step(c))
    g = torch.Generator(device=cuda_device).manual_seed(1)
    for _ in range(2):
        with torch.no_grad():
            for t in [c["w"], c["vals"], *c["per_type"], *c["tables"], *_proj_leaves(c), c["grad"]]:
                t.copy_(torch.randn(t.shape, generator=g, device=cuda_device))
        graph.replay()
        _assert_close_all(outs, _every_splice_reference(c))


def test_fusion_forward_capture_and_replay(cuda_device):
    g = torch.Generator(device=cuda_device).manual_seed(0)
    n, D, d = 41, 24, 8
    tables = dict(id_table=torch.randn(n, d, device=cuda_device, generator=g),
                  semantic_table=torch.randn(n, D, device=cuda_device, generator=g),
                  weight=torch.randn(d, D, device=cuda_device, generator=g),
                  bias=torch.randn(d, device=cuda_device, generator=g),
                  fuse_weight=torch.randn(d, 2 * d, device=cuda_device, generator=g),
                  fuse_bias=torch.randn(d, device=cuda_device, generator=g))
    ids = torch.randint(0, n, (4, 7), device=cuda_device, generator=g)
    ids[:, :2] = 0

    def forward():
        return semantic_fusion_lookup(ids, mode="gate", padding_idx=0, strategy="table", **tables)

    with torch.no_grad():
        graph, out = _capture(forward)
        ids.copy_(torch.randint(0, n, ids.shape, device=cuda_device, generator=g))
        graph.replay()
    want = reference.semantic_fusion(ids, tables["id_table"], tables["semantic_table"], tables["weight"],
                                     tables["bias"], tables["fuse_weight"], tables["fuse_bias"], "gate", 0)
    torch.testing.assert_close(out, want, rtol=2e-5, atol=2e-5)


def test_lightgcn_forward_capture_and_replay(cuda_device):
    a = (torch.rand(50, 50, device=cuda_device) < 0.1).float()
    a = a + a.t()
    csr = a.to_sparse_csr()
    emb = torch.randn(50, 20, device=cuda_device)
    graph, out = _capture(lambda: lightgcn_propagate(csr, emb, num_layers=3, symmetric=True))
    emb.copy_(torch.randn_like(emb))
    graph.replay()
    want, x = emb / 4, emb
    for _ in range(3):
        x = a @ x
        want = want + x / 4
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["add", "gate", "concat"])
def test_triton_fusion_kernels_in_their_gpu_block_configs(cuda_device, mode):
    from fastrec.kernels import fusion as tk

    g = torch.Generator(device=cuda_device).manual_seed(1)
    for n, D, d in [(1, 1, 1), (300, 70, 17), (1000, 384, 64)]:
        sem = torch.randn(n, D, device=cuda_device, generator=g)
        w, b = torch.randn(d, D, device=cuda_device, generator=g), torch.randn(d, device=cuda_device, generator=g)
        rows = torch.randperm(n, device=cuda_device)[: max(1, n // 2)]
        torch.testing.assert_close(tk.gather_reduce(sem, rows, w, b), sem[rows] @ w.t() + b, rtol=5e-4, atol=5e-4)
        grad = torch.randn(rows.numel(), d, device=cuda_device, generator=g)
        torch.testing.assert_close(tk.weight_grad(rows, grad, sem), grad.t() @ sem[rows], rtol=5e-4, atol=5e-4)
        id_table = torch.randn(n, d, device=cuda_device, generator=g)
        ids = torch.randint(0, n, (5, 9), device=cuda_device, generator=g)
        fw = torch.randn(d, 2 * d, device=cuda_device, generator=g) if mode != "add" else None
        fb = torch.randn(d, device=cuda_device, generator=g) if mode != "add" else None
        from fastrec.ops.fusion import _triton_lookup

        out = _triton_lookup(ids, id_table, sem, w, b, fw, fb, mode, -1, 1)[0]
        want = reference.semantic_fusion(ids, id_table, sem, w, b, fw, fb, mode, -1)
        torch.testing.assert_close(out, want, rtol=5e-4, atol=5e-4)


def test_triton_splice_and_trie_kernels_in_their_gpu_block_configs(cuda_device):
    from fastrec.kernels import collab as kc
    from fastrec.kernels import trie as kt

    from fastrec.ops import build_trie

    ids = torch.randint(0, 3000, (7, 300), device=cuda_device)
    ph = torch.tensor([2998, 2999], device=cuda_device)
    ids[:, ::37] = 2999
    weight = torch.randn(3000, 1100, device=cuda_device, dtype=torch.bfloat16)
    n = int(torch.isin(ids, ph).sum())
    values = torch.randn(n, 1100, device=cuda_device, dtype=torch.bfloat16)
    out, _ = kc.splice_collab_tokens(ids, weight, ph, values)
    want, _ = reference.splice_collab_tokens(ids, weight, ph, values)
    assert torch.equal(out, want)
    seqs = [[100 + i % 7, 200 + i % 11, 300 + i] for i in range(500)]
    indptr, tokens, children = build_trie(seqs, end_tokens=[1], device=cuda_device)
    scores = torch.randn(40, 2100, device=cuda_device)
    gen = torch.tensor([seqs[i][:2] for i in range(40)], device=cuda_device)
    got = kt.trie_mask(scores, gen, indptr, tokens, children, float("-inf"))
    want = reference.trie_mask(scores, gen, indptr, tokens, children, float("-inf"))
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_fused_gather_projection_in_its_gpu_block_config(cuda_device, dtype):
    from fastrec.kernels import collab as kc

    from fastrec.ops.collab import project_rows

    g = torch.Generator(device=cuda_device).manual_seed(2)
    table = torch.randn(500, 96, device=cuda_device, generator=g).to(dtype)
    ids = torch.randint(0, 500, (77,), device=cuda_device, generator=g)
    proj = [torch.randn(130, 96, device=cuda_device, generator=g).to(dtype) / 10, None,
            torch.randn(1030, 130, device=cuda_device, generator=g).to(dtype) / 10,
            torch.randn(1030, device=cuda_device, generator=g).to(dtype)]
    got = kc.project_gathered(table, ids, proj)
    want = project_rows(table.float()[ids], [None if p is None else p.float() for p in proj])
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)


def _fusion_tables(device, n=41, D=24, d=8):
    g = torch.Generator(device=device).manual_seed(0)
    t = dict(id_table=torch.randn(n, d, device=device, generator=g),
             semantic_table=torch.randn(n, D, device=device, generator=g),
             weight=torch.randn(d, D, device=device, generator=g), bias=torch.randn(d, device=device, generator=g),
             fuse_weight=torch.randn(d, 2 * d, device=device, generator=g),
             fuse_bias=torch.randn(d, device=device, generator=g))
    return {k: (v.requires_grad_() if k != "semantic_table" else v) for k, v in t.items()}


@pytest.mark.parametrize("strategy", ["auto", "unique", "table"])
def test_fusion_forward_backward_validate_false_never_syncs(cuda_device, strategy, cuda_syncs_raise):
    t = _fusion_tables(cuda_device)
    ids = torch.randint(0, 41, (4, 7), device=cuda_device)
    ids[:, :2] = 0
    params = [v for k, v in t.items() if k != "semantic_table"]

    def step():
        out = semantic_fusion_lookup(ids, mode="gate", padding_idx=0, strategy=strategy, validate=False, **t)
        return torch.autograd.grad(out.pow(2).sum(), params)

    want = step()  # warm-up (Triton compile)
    torch.cuda.synchronize()
    with cuda_syncs_raise():
        got = step()
    ref = reference.semantic_fusion(ids, t["id_table"], t["semantic_table"], t["weight"], t["bias"],
                                    t["fuse_weight"], t["fuse_bias"], "gate", 0)
    for a, b, c in zip(got, want, torch.autograd.grad(ref.pow(2).sum(), params), strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


def test_fusion_unique_forward_capture_validate_false(cuda_device):
    t = {k: v.detach() for k, v in _fusion_tables(cuda_device).items()}
    ids = torch.randint(0, 41, (4, 7), device=cuda_device)
    with torch.no_grad():
        graph, out = _capture(lambda: semantic_fusion_lookup(ids, mode="concat", strategy="unique", validate=False,
                                                             **t))
        ids.copy_(torch.randint(0, 41, ids.shape, device=cuda_device))
        graph.replay()
    want = reference.semantic_fusion(ids, t["id_table"], t["semantic_table"], t["weight"], t["bias"],
                                     t["fuse_weight"], t["fuse_bias"], "concat", -1)
    torch.testing.assert_close(out, want, rtol=2e-5, atol=2e-5)


def test_lightgcn_forward_backward_validate_false_never_syncs(cuda_device, cuda_syncs_raise):
    a = (torch.rand(50, 50, device=cuda_device) < 0.1).float() * torch.rand(50, 50, device=cuda_device)
    csr = a.to_sparse_csr()  # not symmetric: the backward builds the transpose on the device
    emb = torch.randn(50, 20, device=cuda_device, requires_grad=True)

    def step():
        return torch.autograd.grad(lightgcn_propagate(csr, emb, num_layers=3, validate=False).pow(2).sum(), emb)[0]

    step()
    torch.cuda.synchronize()
    with cuda_syncs_raise():
        got = step()
    e2 = emb.detach().clone().requires_grad_(True)
    x, want = e2, e2 / 4
    for _ in range(3):
        x = a @ x
        want = want + x / 4
    torch.testing.assert_close(got, torch.autograd.grad(want.pow(2).sum(), e2)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype,w_dtype,tf32", [(torch.bfloat16, torch.bfloat16, False),
                                                (torch.float16, torch.float16, False),
                                                (torch.float32, torch.float32, True),
                                                (torch.bfloat16, torch.float32, False)])
def test_triton_fusion_tensor_core_dots_within_their_tolerance(cuda_device, dtype, w_dtype, tf32, monkeypatch):
    """bf16/fp16 operands: native dots, fp32 accumulation (only the summation order differs from upcasting
    first); fp32 with FASTREC_TF32=1: TF32 dots, each element within TF32's error bound (an H200 run put one
    element at 1.6e-1 relative, 2.8e-3 absolute: a cancelling sum); a bf16 table against an fp32 weight: bf16x3,
    exact products, so each element within the fp32 accumulation's bound alone. d = 256 runs the autotuned
    configs."""
    from fastrec.kernels import fusion as tk

    if tf32:
        monkeypatch.setenv("FASTREC_TF32", "1")
    g = torch.Generator(device=cuda_device).manual_seed(3)
    for n, D, d in [(700, 4096, 64), (300, 512, 256)]:
        sem = torch.randn(n, D, device=cuda_device, generator=g).to(dtype)
        w = (torch.randn(d, D, device=cuda_device, generator=g) / D ** 0.5).to(w_dtype)
        b = torch.randn(d, device=cuda_device, generator=g).to(w_dtype)
        rows = torch.randperm(n, device=cuda_device)[: n // 2]
        want = sem.double()[rows] @ w.double().t() + b.double()
        got = tk.gather_reduce(sem, rows, w, b).double()
        grad = torch.randn(rows.numel(), d, device=cuda_device, generator=g)
        want_g = grad.double().t() @ sem.double()[rows]
        got_g = tk.weight_grad(rows, grad, sem).double()
        if tf32 or w_dtype != dtype:  # each element within its rigorous bound (a wrong row or column: O(1) off)
            per_product = 2 * 2**-10 if tf32 else 0.0
            _assert_within_tf32_bound(got, want, sem.double()[rows].abs() @ w.double().abs().t(), D, per_product)
            _assert_within_tf32_bound(got_g, want_g, grad.double().abs().t() @ sem.double()[rows].abs(), len(rows),
                                      per_product)
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got_g, want_g, rtol=1e-4, atol=1e-3)


def _assert_within_tf32_bound(got: torch.Tensor, want: torch.Tensor, abs_products: torch.Tensor, terms: int,
                              per_product: float = 2 * 2**-10):
    """|got - want| <= (per_product + terms 2^-24) sum_i |a_i b_i| + 1e-6 per element: per_product 2 u for TF32
    operands (u = 2^-10 covers rounding and truncation to 10 mantissa bits), 0 for exact products (bf16x3);
    and an fp32 accumulation of `terms` products."""
    bound = (per_product + terms * 2**-24) * abs_products + 1e-6
    excess = ((got - want).abs() - bound).max().item()
    assert excess <= 0, f"an element is {excess:.3g} past its TF32 error bound"


def _power_law(device, index_dtype=torch.int32):
    from test_graph import power_law_csr

    with torch.device(device):
        return power_law_csr(index_dtype=index_dtype, seed=5)


@pytest.mark.parametrize("d", [3, 64])
def test_spmm_and_lightgcn_power_law_capture_and_replay(cuda_device, d):
    """The merge-path kernels (carry scratch from the caching allocator, two launches per pass) under CUDA-graph
    capture: a 50,000-neighbour row split across ~200 warps, replayed on new inputs, bit for bit as eager."""
    indptr, indices, values = _power_law(cuda_device)
    x = torch.randn(2500, d, device=cuda_device)
    graph = type("G", (), {"indptr": indptr, "indices": indices, "values": values, "is_symmetric": False})()

    def forward():
        return spmm(indptr, indices, values, x), lightgcn_propagate(graph, x, num_layers=3, validate=False)

    with torch.no_grad():
        cuda_graph, (out, prop) = _capture(forward)
        x.copy_(torch.randn_like(x))
        cuda_graph.replay()
        want_out, want_prop = forward()
    assert torch.equal(out, want_out) and torch.equal(prop, want_prop)
    from test_graph import assert_close_to_oracle, spmm_fp64

    assert_close_to_oracle(out, spmm_fp64(indptr, indices, values, x))


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_lightgcn_power_law_forward_backward_validate_false_never_syncs(cuda_device, cuda_syncs_raise, index_dtype):
    indptr, indices, values = _power_law(cuda_device, index_dtype)
    graph = type("G", (), {"indptr": indptr, "indices": indices, "values": values, "is_symmetric": False})()
    emb = torch.randn(2500, 64, device=cuda_device, requires_grad=True)

    def step():
        return torch.autograd.grad(lightgcn_propagate(graph, emb, num_layers=3, validate=False).pow(2).sum(), emb)[0]

    want = step()
    torch.cuda.synchronize()
    with cuda_syncs_raise():
        got = step()
    assert torch.equal(got, want)  # deterministic: no atomics in the forward or the transpose's backward


@pytest.mark.parametrize("d", [32, 130])  # 130: the residual in the scratch buffer, not in registers
def test_residual_encode_and_nearest_code_capture_and_replay(cuda_device, d):
    """The Triton quantize kernel (autotuned in the warm-up) replays in a CUDA graph on new input and still
    gives exact fp32 search's codes."""
    from fastrec.bench.gpu import check_exact_codes

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, d, generator=g).to(cuda_device)
    codebooks = torch.randn(3, 256, d, generator=g).to(cuda_device)
    graph, (codes, quantized) = _capture(lambda: residual_encode(x, codebooks))
    graph_nc, (index, sqdist) = _capture(lambda: nearest_code(x, codebooks[0]))
    x.copy_(torch.randn(3000, d, generator=g).to(cuda_device))
    graph.replay()
    graph_nc.replay()
    torch.cuda.synchronize()
    check_exact_codes(x.cpu(), codebooks.cpu(), codes.cpu())
    torch.testing.assert_close(quantized.cpu(), codebooks.cpu()[torch.arange(3)[None], codes.cpu()].sum(1))
    assert torch.equal(index, residual_encode(x, codebooks[:1])[0][:, 0])
    torch.testing.assert_close(sqdist.cpu(), (x.cpu() - codebooks[0].cpu()[index.cpu()]).pow(2).sum(1))

