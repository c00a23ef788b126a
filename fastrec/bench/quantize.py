"""Benchmark cases of the residual-quantization family (nearest_code, residual_encode).

Peers, all in the same run: torch eager (addmm + argmin over row chunks, the best chunk), faiss
IndexFlatL2 search per level, faiss ResidualQuantizer with beam 1, vector-quantize-pytorch ResidualVQ,
and plain sgemm of the same shapes into a preallocated output (the compute bound of any GEMM-based
search). On a CPU with AMX, "fastrec fp32 path" is fastrec with the tile unit turned off (FASTREC_CPU_AMX=0):
the AMX gain, measured in the same run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import fastrec
from fastrec.bench.core import Case, available, have, time_ms, with_env
from fastrec.ops import nearest_code, residual_encode

SHAPES = [(100_000, 32, 256, 4), (100_000, 64, 512, 4), (1_000_000, 32, 256, 4), (1_000_000, 64, 512, 4)]


def _inputs(n: int, d: int, k: int, levels: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    scale = torch.logspace(0, -1, levels)[:, None, None]  # residual codebooks shrink level by level
    return x, torch.randn(levels, k, d, generator=g) * scale


def eager_encode(x: torch.Tensor, codebooks: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What one writes without fastrec: per level and row chunk, ||c||^2 - 2 x c^T by addmm, then argmin."""
    residual = x.clone()
    codes = torch.empty(x.shape[0], codebooks.shape[0], dtype=torch.int64)
    for level, cb in enumerate(codebooks):
        norms = cb.pow(2).sum(1)
        for start in range(0, x.shape[0], chunk):
            part = residual[start:start + chunk]
            dist = torch.addmm(norms, part, cb.t(), alpha=-2.0)
            codes[start:start + chunk, level] = dist.argmin(1)
        residual -= cb[codes[:, level]]
    return codes, x - residual


def best_eager_chunk(x: torch.Tensor, codebooks: torch.Tensor) -> int:
    sample = x[: min(len(x), 100_000)]
    times = {c: time_ms(lambda c=c: eager_encode(sample, codebooks, c), min_time=0.05, max_reps=3)
             for c in (2048, 8192, 32768)}
    return min(times, key=times.get)


def faiss_flat_per_level(x: torch.Tensor, codebooks: torch.Tensor):
    import faiss

    residual = x.numpy().copy()
    codes = []
    for cb in codebooks.numpy():
        index = faiss.IndexFlatL2(cb.shape[1])
        index.add(cb)
        _, ids = index.search(residual, 1)
        residual -= cb[ids[:, 0]]
        codes.append(ids[:, 0])
    return codes


def faiss_residual_quantizer(codebooks: torch.Tensor):
    import faiss

    levels, k, d = codebooks.shape
    rq = faiss.ResidualQuantizer(d, levels, int(k).bit_length() - 1)
    faiss.copy_array_to_vector(codebooks.numpy().ravel(), rq.codebooks)
    rq.is_trained = True
    rq.max_beam_size = 1
    return rq


def vqtorch_residual_vq(codebooks: torch.Tensor):
    from vector_quantize_pytorch import ResidualVQ

    levels, k, d = codebooks.shape
    rvq = ResidualVQ(dim=d, num_quantizers=levels, codebook_size=k).eval()
    for layer, cb in zip(rvq.layers, codebooks, strict=True):
        layer._codebook.embed.copy_(cb[None])
        layer._codebook.initted.fill_(True)
    return rvq


def sgemm_bound(x: torch.Tensor, codebooks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    for cb in codebooks:
        torch.mm(x, cb.t(), out=out)
    return out


def fp32_path(fn: Callable) -> Callable:
    """`fn` with the AMX tile unit turned off (the fp32 micro-kernel), the environment restored after."""
    return with_env(fn, "FASTREC_CPU_AMX", "0")


def cases(quick: bool = False) -> list[Case]:
    amx = bool(fastrec.backends()["cpu_amx"])
    out = []
    shapes = SHAPES[:1] if quick else SHAPES
    for n, d, k, levels in shapes:
        def make(n=n, d=d, k=k, levels=levels):
            x, codebooks = _inputs(n, d, k, levels)
            inputs = {"x": x, "cb": codebooks, "chunk": best_eager_chunk(x, codebooks), "gemm_out": torch.empty(n, k)}
            if have("faiss"):
                import faiss

                faiss.omp_set_num_threads(torch.get_num_threads())
                inputs["rq"] = faiss_residual_quantizer(codebooks)
            if have("vector_quantize_pytorch"):
                inputs["rvq"] = vqtorch_residual_vq(codebooks)
            return inputs

        impls = {
            "fastrec": lambda i: residual_encode(i["x"], i["cb"]),
            **({"fastrec fp32 path": fp32_path(lambda i: residual_encode(i["x"], i["cb"]))} if amx else {}),
            "torch eager (best chunk)": lambda i: eager_encode(i["x"], i["cb"], i["chunk"]),
            "faiss IndexFlatL2 per level": lambda i: faiss_flat_per_level(i["x"], i["cb"]),
            "faiss ResidualQuantizer b=1": lambda i: i["rq"].compute_codes(i["x"].numpy()),
            "sgemm only (bound)": lambda i: sgemm_bound(i["x"], i["cb"], i["gemm_out"]),
        }
        if n <= 100_000:  # ResidualVQ materialises N x K distances per level; it is slow at 1M
            impls["vector-quantize-pytorch RVQ"] = lambda i: i["rvq"](i["x"][None])
        impls = available(impls, {"faiss IndexFlatL2 per level": "faiss", "faiss ResidualQuantizer b=1": "faiss",
                                  "vector-quantize-pytorch RVQ": "vector_quantize_pytorch"})
        targets = {"faiss IndexFlatL2 per level": 2.0, "torch eager (best chunk)": 5.0}
        if (n, d, k) == (100_000, 32, 256):
            # "within 1.4x of sgemm": sgemm time / fastrec time must be at least 1 / 1.4
            targets["sgemm only (bound)"] = round(1 / 1.4, 3)
        out.append(Case("residual_encode", f"N={n:,} D={d} K={k} L={levels}", make, impls, targets,
                        quick=(n, d, k) == (100_000, 32, 256)))

    def make_nc():
        x, codebooks = _inputs(100_000, 32, 256, 1)
        return {"x": x, "cb": codebooks[0]}

    out.append(Case("nearest_code", "N=100,000 D=32 K=256", make_nc, {
        "fastrec": lambda i: nearest_code(i["x"], i["cb"]),
        **({"fastrec fp32 path": fp32_path(lambda i: nearest_code(i["x"], i["cb"]))} if amx else {}),
        "torch eager (cdist+argmin)": lambda i: torch.cdist(i["x"], i["cb"]).argmin(1),
    }))
    return out
