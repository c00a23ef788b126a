"""Driver for `compute-sanitizer --tool memcheck` (stage 2 of `make gpu-check`): every fastrec op forward and
backward once on odd shapes, the Triton kernels directly (the op may pick the CUDA C++ kernel), and the bad
inputs the kernels must survive without a host check (NaN rows, D = 0, out-of-range ids, a malformed trie
indptr). Small on purpose: memcheck slows every kernel by one to two orders of magnitude.

    python3 scripts/gpu_sanitize.py [--device cuda|cpu]

Prints one line per op and `gpu_sanitize: N calls ok` at the end; any exception ends it non-zero.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def calls(device: torch.device) -> list[tuple[str, object]]:
    """(name, thunk) pairs; each thunk runs one op (forward, backward where there is one)."""
    import fastrec.kernels.collab as tk_collab
    import fastrec.kernels.fusion as tk_fusion
    import fastrec.kernels.quantize as tk_quantize
    import fastrec.kernels.trie as tk_trie

    from fastrec import ops

    g = torch.Generator().manual_seed(0)
    # the Triton kernels run on CUDA tensors, or on CPU ones under the interpreter (the CPU dry run)
    triton_here = device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"

    def rand(*shape, grad=False, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype).requires_grad_(grad)

    def backward(out, *inputs):
        torch.autograd.grad(out.float().sum(), inputs)

    # quantize: odd N, D, K; fp32 and bf16
    def nearest():
        x, cb = rand(37, 13, grad=True), rand(29, 13, grad=True)
        backward(ops.nearest_code(x, cb)[1], x, cb)
        ops.nearest_code(rand(37, 13, dtype=torch.bfloat16), rand(29, 13, dtype=torch.bfloat16))

    def residual():
        cbs = rand(3, 29, 13, grad=True)
        backward(ops.residual_encode(rand(37, 13), cbs)[1], cbs)

    def quantize_bad():
        torch.ops.fastrec.nearest_code(rand(9, 0), rand(4, 0))  # D = 0
        if device.type == "cuda":  # the CPU kernel raises for NaN rows (its check is inside its pass)
            x = rand(37, 13)
            x[5] = float("nan")
            torch.ops.fastrec.nearest_code(x, rand(29, 13))  # no host check: NaN row -> code 0
            torch.ops.fastrec.residual_encode(x, rand(2, 29, 13))

    def triton_quantize():
        if triton_here:
            tk_quantize.nearest_code(rand(37, 13), rand(29, 13))
            tk_quantize.residual_encode(rand(37, 13, dtype=torch.bfloat16), rand(2, 29, 13, dtype=torch.bfloat16))
            tk_quantize.residual_encode(rand(37, 150), rand(2, 29, 150))  # D > 128: the scratch-buffer path
            # both dot precisions, the resolve step and pass 2 (duplicate codes: three candidates per row)
            cb = rand(2, 29, 13)
            cb[:, 1:4] = cb[:, :1]
            for precision, resolve in (("tf32x3", True), ("tf32", True), ("tf32", False)):
                tk_quantize.encode(rand(37, 13), cb, True, True, precision=precision, resolve=resolve)

    def sinkhorn():
        ops.sinkhorn_assign(rand(37, 11).abs())
        ops.sinkhorn_assign(rand(41, 600, dtype=torch.bfloat16).t().contiguous().t(), 0.01, 3)  # K over one tile
        ops.sinkhorn_assign(rand(1100, 5, dtype=torch.float64)[:, ::2], 0.05, 2)  # several programs, strided

    # graph: a small non-symmetric CSR with an empty row, int32 and int64
    indptr = torch.tensor([0, 2, 2, 5, 6, 9], device=device)
    indices = torch.tensor([1, 4, 0, 2, 3, 4, 0, 1, 3], device=device)

    def spmm():
        values, dense = rand(9, grad=True), rand(5, 7, grad=True)
        backward(ops.spmm(indptr, indices, values, dense), values, dense)
        ops.spmm(indptr.int(), indices.int(), values.detach(), dense.detach().bfloat16())

    def lightgcn():
        emb = rand(5, 7, grad=True)
        csr = torch.sparse_csr_tensor(indptr, indices, rand(9), (5, 5))
        backward(ops.lightgcn_propagate(csr, emb, num_layers=3), emb)

    def graph_power_law():
        # the CUDA SpMM's merge-path paths: a 3,000-neighbour row split across ~12 warps (carries + the owner's
        # ordered fix-up), empty rows, a popular column (a long row of the transpose, in the backward), d = 3
        # and 130 (scalar loads), 64 (float4 loads), a misaligned dense view (scalar path), int32 and int64
        deg = (torch.rand(600, generator=g) ** -1.5).long().clamp(max=60) - 1
        deg[5], deg[-1] = 3_000, 0
        cols = torch.randint(0, 600, (int(deg.sum()),), generator=g)
        cols[::3] = 1
        ptr = torch.cat([torch.zeros(1, dtype=torch.long), deg.cumsum(0)]).to(device)
        cols = cols.to(device)
        for dim, index in [(3, torch.int32), (64, torch.int64), (130, torch.int32)]:
            values, dense = rand(cols.numel(), grad=True), rand(600, dim, grad=True)
            backward(ops.spmm(ptr.to(index), cols.to(index), values, dense), values, dense)
            emb = rand(600, dim, grad=True)
            csr = torch.sparse_csr_tensor(ptr.to(index), cols.to(index), values.detach(), (600, 600))
            backward(ops.lightgcn_propagate(csr, emb, num_layers=3, validate=False), emb)
        view = rand(600 * 64 + 1)[1:].view(600, 64)  # 4-byte storage offset: no 16-byte loads
        ops.lightgcn_propagate(torch.sparse_csr_tensor(ptr, cols, rand(cols.numel()), (600, 600)), view, 2)

    def topk():
        q, items = rand(6, 7, grad=True), rand(11, 7, grad=True)
        ex = (torch.tensor([0, 1, 1, 3, 3, 3, 4], device=device), torch.tensor([2, 0, 10, 5], device=device))
        backward(ops.topk_scores(q, items, 5, exclude=ex)[0].clamp(min=-1e4), q, items)
        from fastrec.kernels import topk as tk  # the threshold scheme: its scan, and a slot overflow (fallback)

        # smaller on the CPU, where the interpreter runs the kernels (the slot overflow's fallback scan at 70 x
        # 3,000 takes ~20 s there)
        u, n = (70, 3000) if device.type == "cuda" else (24, 1000)
        q, items = rand(u, 33), rand(n, 33)
        ex = (torch.arange(u + 1, device=device) * 2, torch.randint(0, n, (2 * u,), device=device))
        for cap in (None, 3):
            tk.topk_scores(q, items, 5, *ex, scheme="threshold", stride=7, cap=cap)

    # collab: placeholders of two types, an odd H, the fused projection (inference) and training paths
    ids = torch.tensor([[3, 98, 7, 99, 1], [99, 4, 98, 2, 6]], device=device)
    ph = torch.tensor([98, 99], device=device)

    def splice():
        weight, values = rand(100, 19, grad=True), rand(4, 19, grad=True)
        backward(ops.splice_collab_tokens(ids, weight, ph, values), weight, values)
        rows = [rand(2, 19, grad=True), rand(2, 19, grad=True)]
        backward(ops.splice_collab_rows(ids, weight, ph, rows), *rows)

    def collab_embeds():
        weight = rand(100, 19)
        tables = [rand(10, 6), rand(12, 6)]
        projs = [(rand(8, 6), rand(8), rand(19, 8), rand(19)), (rand(19, 6), None)]
        slot_ids = [torch.tensor([1, 9], device=device), torch.tensor([0, 11], device=device)]
        with torch.no_grad():  # the fused Triton gather + projection
            ops.collab_inputs_embeds(ids, weight, ph, slot_ids, tables, projs)
        tables[0].requires_grad_(True)
        backward(ops.collab_inputs_embeds(ids, weight, ph, slot_ids, tables, projs), tables[0])

    def triton_collab():
        if triton_here:  # out-of-range ids and slots are clamped inside the kernel
            bad = torch.tensor([[3, 98, 700, 99, -5]], device=device)
            tk_collab.splice_collab_tokens(bad, rand(100, 19), ph, rand(1, 19))

    # fusion: every mode, padding, bf16 semantic table (bf16x3: the fp32 weight and gradient in bf16 planes)
    def fusion():
        item_ids = torch.tensor([[0, 3, 3, 8], [5, 0, 1, 8]], device=device)
        for mode in ("add", "gate", "concat"):
            id_table, weight, bias = rand(9, 6, grad=True), rand(6, 11, grad=True), rand(6, grad=True)
            fw = rand(6, 12, grad=True) if mode != "add" else None
            fb = rand(6, grad=True) if mode != "add" else None
            out = ops.semantic_fusion_lookup(item_ids, id_table, rand(9, 11, dtype=torch.bfloat16), weight, bias,
                                             mode, fw, fb, padding_idx=0)
            backward(out, id_table, weight, bias, *[t for t in (fw, fb) if t is not None])
        # the sync-free path: device-unique slots, whole 64-row blocks of them spare (skipped by the reduction)
        ids = torch.zeros(3, 90, dtype=torch.long, device=device)
        ids[:, -5:] = torch.randint(1, 1000, (3, 5), device=device)  # 270 lookups of 1,000 items: not the table
        id_table, weight = rand(1000, 6, grad=True), rand(6, 33, grad=True)
        out = ops.semantic_fusion_lookup(ids, id_table, rand(1000, 33, dtype=torch.bfloat16), weight, None,
                                         padding_idx=0, validate=False)
        backward(out, id_table, weight)

    def fusion_bad():
        from fastrec.ops.fusion import _triton_lookup

        bad = torch.tensor([[-1, 3, 1000]], device=device)  # clamped by the Triton path, never read past I
        if device.type == "cuda":  # (the CPU kernel raises IndexError inside its pass)
            torch.ops.fastrec.semantic_fusion_lookup(bad, rand(9, 6), rand(9, 11), rand(6, 11), None, None, None,
                                                     "add", -1, 1)
        if triton_here:
            _triton_lookup(bad, rand(9, 6), rand(9, 11), rand(6, 11), None, None, None, "add",
                           -1, 1)
            tk_fusion.weight_grad(torch.tensor([2, 0, 1], device=device), rand(3, 6), rand(9, 0))
            # 2500 rows: three row splits, a ragged last one; odd D; fp32 and bf16 (bf16x3: gradient planes) tables
            rows = torch.randint(0, 40, (2500,), device=device)
            for dtype in (torch.float32, torch.bfloat16):
                tk_fusion.weight_grad(rows, rand(2500, 7), rand(40, 37, dtype=dtype))

    # trie: a built trie, then a malformed indptr with validation off (the kernels clamp it)
    def trie():
        indptr_t, tokens, children = ops.build_trie([[5, 7], [5, 9], [6, 7]], end_tokens=[1], pad_tokens=[0],
                                                    device=device)
        scores = rand(3, 13, grad=True)
        gen = torch.tensor([[5], [6], [8]], device=device)
        backward(ops.trie_mask(scores, gen, indptr_t, tokens, children, fill=0.0), scores)
        bad = indptr_t.clone()
        bad[1] = 10**6
        if device.type == "cuda":  # (the CPU kernel checks indptr inside its pass: ValueError)
            torch.ops.fastrec.trie_mask(scores.detach(), gen, bad, tokens, children, float("-inf"))
        if triton_here:
            tk_trie.trie_mask(scores.detach(), gen, bad, tokens, children, float("-inf"))

    return [("nearest_code", nearest), ("residual_encode", residual), ("quantize bad input", quantize_bad),
            ("triton quantize", triton_quantize), ("sinkhorn_assign", sinkhorn), ("spmm", spmm),
            ("lightgcn_propagate", lightgcn), ("spmm / lightgcn power-law", graph_power_law),
            ("topk_scores", topk), ("splice_collab", splice),
            ("collab_inputs_embeds", collab_embeds), ("triton splice bad ids", triton_collab),
            ("semantic_fusion_lookup", fusion), ("fusion bad input", fusion_bad), ("trie_mask", trie)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    device = torch.device(parser.parse_args(argv).device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_sanitize: no CUDA device visible", file=sys.stderr)
        return 2
    import fastrec

    print(f"gpu_sanitize: backends {fastrec.backends()['cuda' if device.type == 'cuda' else 'cpu']}", flush=True)
    todo = calls(device)
    for name, fn in todo:
        fn()
        _sync(device)
        print(f"gpu_sanitize: {name} ok", flush=True)
    print(f"gpu_sanitize: {len(todo)} calls ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
