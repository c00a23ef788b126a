"""sinkhorn_assign on every available device: values against the reference (computed on the CPU), the
balancing property, opcheck and torch.compile there. (The CPU-only depth lives in test_lcrec_index.py.)"""

import pytest
import torch

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
