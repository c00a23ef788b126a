"""sinkhorn_assign on every available device: values against the reference (computed on the CPU), the
balancing property, opcheck and torch.compile there; on CUDA no host sync, CUDA-graph capture and no N x K
float64 allocation. Then the Triton kernel (the CUDA backend) called directly: on CPU tensors under
TRITON_INTERPRET=1, on CUDA tensors on a GPU. (The CPU-only depth lives in test_lcrec_index.py.)"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastrec import reference
from fastrec.ops import sinkhorn_assign


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (300, 17), (1000, 256)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sinkhorn_on_device_matches_cpu_reference(shape, dtype, on_device):
    d = torch.rand(shape, generator=torch.Generator().manual_seed(3), device="cpu").to(dtype)
    got = sinkhorn_assign(d.to(on_device), 0.003, 50)
    assert got.device.type == on_device.type and got.dtype == torch.int64
    want = reference.sinkhorn_assign(d, 0.003, 50)
    assert (got.cpu() == want).float().mean() >= 0.99  # float64 rounding may flip a rare near-tie


def test_sinkhorn_on_device_balances_where_argmin_does_not(on_device):
    d = torch.rand(1024, 32)
    d[:, 5] -= 0.5  # code 5 is nearest for most rows
    greedy = d.argmin(1).bincount(minlength=32)
    balanced = sinkhorn_assign(d, 0.003, 50).bincount(minlength=32)
    assert greedy.max() > 500 and balanced.max() < greedy.max() / 2


def test_sinkhorn_on_device_opcheck_and_compile(on_device):
    d = torch.rand(33, 9)
    torch.library.opcheck(torch.ops.fastrec.sinkhorn_assign.default, (d, 0.05, 7))
    f = torch.compile(lambda d: sinkhorn_assign(d, 0.05, 7), fullgraph=True, backend="aot_eager")
    assert torch.equal(f(d).cpu(), reference.sinkhorn_assign(d.cpu(), 0.05, 7))


def test_sinkhorn_on_device_validate_false_uses_no_syncing_op(on_device, no_sync_ops):
    d = torch.rand(257, 19)
    want = reference.sinkhorn_assign(d.cpu(), 0.01, 9)
    with no_sync_ops():
        got = sinkhorn_assign(d, 0.01, 9, validate=False)
    assert (got.cpu() == want).float().mean() >= 0.99


@pytest.mark.cuda
def test_sinkhorn_cuda_never_syncs_and_replays_in_a_cuda_graph(cuda_device, cuda_syncs_raise):
    d = torch.rand(3000, 64, device=cuda_device)
    want = sinkhorn_assign(d, 0.003, 20, validate=False)  # warm-up (Triton compiles)
    torch.cuda.synchronize()
    with cuda_syncs_raise():
        got = sinkhorn_assign(d, 0.003, 20, validate=False)
    torch.cuda.synchronize()
    assert torch.equal(got, want)  # deterministic: fixed-order column sums
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        sinkhorn_assign(d, 0.003, 20)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = sinkhorn_assign(d, 0.003, 20)
    d.copy_(torch.rand(3000, 64, device=cuda_device))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, sinkhorn_assign(d, 0.003, 20))


@pytest.mark.cuda
def test_sinkhorn_cuda_never_allocates_n_by_k_float64(cuda_device):
    n, k = 100_000, 256
    d = torch.rand(n, k, device=cuda_device)
    sinkhorn_assign(d, 0.003, 2)  # warm-up
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    sinkhorn_assign(d, 0.003, 5, validate=False)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < n * k * 8 / 8  # the reference needs n * k * 8 several times


# ---- the Triton kernel called directly: on CPU tensors under TRITON_INTERPRET=1, on CUDA tensors on a GPU


def _plan(d: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """The reference's final transport plan (float64, CPU), to tell clear rows from near-ties."""
    d = d.cpu().double()
    middle = (d.max() + d.min()) / 2
    q = torch.exp(-((d - middle) / (d.max() - middle + 1e-5)) / epsilon)
    q = q / q.sum()
    n, k = q.shape
    for _ in range(iters):
        q = q / q.sum(dim=1, keepdim=True) / n
        q = q / q.sum(dim=0, keepdim=True) / k
    return q


def _assert_argmax_of_plan(codes, d, epsilon, iters, rel_gap=1e-6):
    """Every code is a row's argmax of the reference plan wherever the best two differ by more than rel_gap."""
    q = _plan(d, epsilon, iters)
    codes = codes.cpu()
    assert codes.dtype == torch.int64 and codes.shape == (d.shape[0],)
    assert ((codes >= 0) & (codes < d.shape[1])).all()
    want = reference.sinkhorn_assign(d.cpu(), epsilon, iters)
    if d.shape[1] == 1:
        assert (codes == 0).all()
        return
    top = q.topk(2, dim=1).values
    clear = (top[:, 0] - top[:, 1]) > rel_gap * top[:, 0]
    assert torch.equal(codes[clear], want[clear])
    # a near-tie row may take either of its tied codes, never a worse one
    chosen = q.gather(1, codes[:, None])[:, 0]
    assert (chosen >= top[:, 0] * (1 - 1e-6)).all()


def _separated(n_per_code: int, k: int, seed: int = 0) -> torch.Tensor:
    """Balanced clusters: row i is near code i % k and far from all the others (the answer is unique)."""
    g = torch.Generator().manual_seed(seed)
    n = n_per_code * k
    d = 0.5 + 0.5 * torch.rand(n, k, generator=g)
    d[torch.arange(n), torch.arange(n) % k] = 0.1 * torch.rand(n, generator=g)
    return d


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_triton_sinkhorn_equals_reference_on_separated_data(dtype, triton_device):
    from fastrec.kernels import sinkhorn as tk

    d = _separated(9, 37).to(dtype)
    want = reference.sinkhorn_assign(d, 0.003, 50)
    assert torch.equal(want, torch.arange(d.shape[0]) % 37)
    got = tk.sinkhorn_assign(d.to(triton_device), 0.003, 50)
    assert got.device.type == triton_device.type and torch.equal(got.cpu(), want)


# interpreter-sized: the GPU runs the same cases (and test_sinkhorn_on_device_* the op at LC-Rec's 50 iterations)
@pytest.mark.parametrize("shape,iters,block_k,dtype", [((300, 17), 50, None, torch.float32),
                                                       ((300, 17), 50, None, torch.bfloat16),
                                                       ((1000, 256), 8, None, torch.float32),
                                                       ((2500, 7), 20, None, torch.bfloat16),  # several programs
                                                       ((333, 40), 8, 16, torch.float32),  # several column tiles
                                                       ((1500, 40), 5, 16, torch.float16)])  # both at once
def test_triton_sinkhorn_agrees_with_reference_on_random_data(shape, iters, block_k, dtype, triton_device):
    from fastrec.kernels import sinkhorn as tk

    d = torch.rand(shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    got = tk.sinkhorn_assign(d.to(triton_device), 0.003, iters, block_k=block_k)
    want = reference.sinkhorn_assign(d, 0.003, iters)
    assert (got.cpu() == want).float().mean() >= 0.99
    _assert_argmax_of_plan(got, d, 0.003, iters)
    assert torch.equal(tk.sinkhorn_assign(d.to(triton_device), 0.003, iters, block_k=block_k), got)  # determinism


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy under the interpreter: inf - inf on the Inf input
def test_triton_sinkhorn_edge_cases(triton_device):
    from fastrec.kernels import sinkhorn as tk

    dev = triton_device
    assert tk.sinkhorn_assign(torch.empty(0, 5, device=dev), 0.003, 50).shape == (0,)
    one_code = tk.sinkhorn_assign(torch.rand(9, 1, device=dev), 0.003, 50)
    assert torch.equal(one_code.cpu(), torch.zeros(9, dtype=torch.long))
    d = torch.rand(50, 6)
    d[3] = d[3, 0]  # a row of exact ties: lowest index
    got = tk.sinkhorn_assign(d.to(dev), 0.003, 0)  # no iteration: each row's nearest code
    assert torch.equal(got.cpu(), d.argmin(1)) and got[3] == 0
    base = torch.rand(23, 41, dtype=torch.float64, device=dev)
    nc = base.t().contiguous().t()[:, ::2]  # non-contiguous: column-major with a column stride of 2
    assert not nc.is_contiguous()
    got = tk.sinkhorn_assign(nc, 0.01, 10)
    assert torch.equal(got.cpu(), reference.sinkhorn_assign(nc.cpu().contiguous(), 0.01, 10))
    for bad in (float("nan"), float("inf")):  # what validate=False lets through: codes stay in range
        d = torch.rand(40, 9)
        d[7, 3] = bad
        codes = tk.sinkhorn_assign(d.to(dev), 0.003, 5).cpu()
        assert codes.shape == (40,) and ((codes >= 0) & (codes < 9)).all()
    const = torch.full((5, 4), 2.0)  # every distance equal: the rescale's 1e-5 keeps it finite; code 0
    assert torch.equal(tk.sinkhorn_assign(const.to(dev), 0.003, 5).cpu(), torch.zeros(5, dtype=torch.long))


def test_triton_sinkhorn_balances(triton_device):
    from fastrec.kernels import sinkhorn as tk

    d = torch.rand(1024, 32, generator=torch.Generator().manual_seed(2))
    d[:, 5] -= 0.5  # code 5 is nearest for most rows
    greedy = d.argmin(1).bincount(minlength=32)
    balanced = tk.sinkhorn_assign(d.to(triton_device), 0.003, 50).cpu().bincount(minlength=32)
    assert greedy.max() > 500 and balanced.max() < greedy.max() / 2
    assert torch.equal(balanced, reference.sinkhorn_assign(d, 0.003, 50).bincount(minlength=32))


def test_triton_sinkhorn_uses_no_syncing_op_and_never_stores_n_by_k(triton_device, no_sync_ops):
    """Every float64 tensor the kernel allocates is O(N + K + programs x K): the only N x K access is reading
    the input. (The dispatch modes see every aten op the wrapper issues, syncing or allocating.)"""
    from fastrec.kernels import sinkhorn as tk
    from torch.utils._python_dispatch import TorchDispatchMode

    sizes = []

    class Allocations(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                    sizes.append(t.numel())
            return out

    n, k = 3000, 64
    d = torch.rand(n, k, generator=torch.Generator().manual_seed(1)).to(triton_device)
    with no_sync_ops(), Allocations():
        got = tk.sinkhorn_assign(d, 0.003, 10)
    assert sizes and max(sizes) <= n  # row minima [N], v [K], partial sums [programs, K] with programs << N
    assert (got.cpu() == reference.sinkhorn_assign(d.cpu(), 0.003, 10)).float().mean() >= 0.99


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 70), k=st.integers(1, 40), iters=st.integers(0, 12),
       epsilon=st.sampled_from([0.003, 0.05, 0.5]), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**31 - 1), multi_tile=st.booleans())
def test_triton_sinkhorn_property_against_reference(n, k, iters, epsilon, dtype, seed, multi_tile, triton_device):
    from fastrec.kernels import sinkhorn as tk

    d = (torch.rand(n, k, generator=torch.Generator().manual_seed(seed)) * 4 - 2).to(dtype)
    got = tk.sinkhorn_assign(d.to(triton_device), epsilon, iters, block_k=16 if multi_tile else None)
    _assert_argmax_of_plan(got, d, epsilon, iters)


def test_triton_sinkhorn_through_the_op_opcheck_and_compile():
    """The op with its CUDA backend (the Triton function) registered for the CPU, under the interpreter:
    schema, fake kernel and autograd registration hold for it, and torch.compile(fullgraph=True) runs it."""
    import os
    import warnings

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 (no GPU); on a GPU test_sinkhorn_on_device_* run it on CUDA")
    from fastrec.kernels import sinkhorn as tk

    calls = []

    def triton_on_cpu(distances, epsilon, iters):
        calls.append(distances.shape)
        return tk.sinkhorn_assign(distances, epsilon, iters)

    lib = torch.library.Library("fastrec", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # overriding the C++ CPU kernel until _destroy restores it
        lib.impl("sinkhorn_assign", triton_on_cpu, "CPU")
    try:
        d = torch.rand(70, 9, generator=torch.Generator().manual_seed(4))
        torch.library.opcheck(torch.ops.fastrec.sinkhorn_assign.default, (d, 0.05, 7))
        torch._dynamo.reset()
        f = torch.compile(lambda d: sinkhorn_assign(d, 0.05, 7, validate=False), fullgraph=True, backend="aot_eager")
        got = f(d)
    finally:
        lib._destroy()
    assert calls and torch.equal(got, reference.sinkhorn_assign(d, 0.05, 7))
