"""The Triton kernels' GPU-only code (native half dots, TF32, autotuned block configs) compiled offline for an
sm_90 target: the interpreter runs none of it, and a kernel that does not compile would first fail on a GPU
box. Runs in a subprocess without TRITON_INTERPRET (Triton decides at import whether to interpret)."""

import os
import subprocess
import sys
import textwrap

import pytest

triton = pytest.importorskip("triton")

SCRIPT = textwrap.dedent('''
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from fastrec.kernels import collab as C, fusion as F, sinkhorn as S, topk as T

    def comp(fn, sig, cx, num_warps=4, num_stages=3):
        triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": num_warps, "num_stages": num_stages})

    C_ = "constexpr"
    for dt, up, prec in [("bf16", False, "ieee"), ("fp32", True, "tf32")]:
        p = "*" + dt
        comp(T.topk_kernel, {"q_ptr": p, "it_ptr": p, "exp_ptr": "*i64", "exi_ptr": "*i32", "ps_ptr": "*fp32",
                             "pi_ptr": "*i32", "U": "i32", "NI": "i32", "d": "i32", "nnz": "i32", "chunk": "i32",
                             "C": "i32", "k": "i32", "HAS_EX": C_, "UPCAST": C_, "PRECISION": C_, "BLOCK_U": C_,
                             "BLOCK_I": C_, "BLOCK_D": C_, "KP": C_},
             {"HAS_EX": True, "UPCAST": up, "PRECISION": prec, "BLOCK_U": 64, "BLOCK_I": 64, "BLOCK_D": 64,
              "KP": 32})
        cfg = F._CONFIGS[-2]
        comp(F.gather_reduce_kernel, {"sem_ptr": p, "rows_ptr": "*i64", "w_ptr": p, "b_ptr": p, "out_ptr": "*fp32",
                                      "U": "i32", "D": "i32", "d": "i32", "HAS_BIAS": C_, "UPCAST": C_,
                                      "PRECISION": C_, "BLOCK_U": C_, "BLOCK_D": C_, "BLOCK_DM": C_},
             {"HAS_BIAS": True, "UPCAST": up, "PRECISION": prec, "BLOCK_DM": 256, **cfg.kwargs}, cfg.num_warps)
        comp(F.weight_grad_kernel, {"sem_ptr": p, "rows_ptr": "*i64", "g_ptr": "*fp32", "out_ptr": "*fp32",
                                    "U": "i32", "D": "i32", "d": "i32", "PRECISION": C_, "BLOCK_U": C_,
                                    "BLOCK_D": C_, "BLOCK_DM": C_},
             {"PRECISION": prec, "BLOCK_U": 32, "BLOCK_D": 64, "BLOCK_DM": 64})
        comp(C.gather_linear_kernel, {"ids_ptr": "*i64", "x_ptr": p, "w_ptr": p, "b_ptr": p, "out_ptr": p,
                                      "N": "i32", "K": "i32", "OUT": "i32", "ROWS": "i32", "HAS_IDS": C_,
                                      "HAS_BIAS": C_, "GELU": C_, "UPCAST": C_, "PRECISION": C_, "BLOCK_N": C_,
                                      "BLOCK_O": C_, "BLOCK_K": C_},
             {"HAS_IDS": True, "HAS_BIAS": True, "GELU": True, "UPCAST": up, "PRECISION": prec,
              **C._LINEAR_CONFIGS[3].kwargs}, 8)
    # sinkhorn: float64 math (libdevice exp) in the GPU tiles, both row-pass variants
    rows, bn, bk = S.blocks(512, False)
    blk = {"ROWS": rows, "BLOCK_N": bn, "BLOCK_K": bk}
    shape = {"N": "i32", "K": "i32", "s0": "i64", "s1": "i64", "ROWS": C_, "BLOCK_N": C_, "BLOCK_K": C_}
    f64 = "*fp64"
    for p in ["*bf16", "*fp64"]:
        nw = S.NUM_WARPS
        comp(S.minmax_kernel, {"d_ptr": p, "rmin_ptr": f64, "lo_ptr": f64, "hi_ptr": f64, **shape}, blk, nw)
        for one in (True, False):
            comp(S.row_pass_kernel, {"d_ptr": p, "rmin_ptr": f64, "scale_ptr": f64, "v_ptr": f64, "u_ptr": f64,
                                     "part_ptr": f64, **shape, "ONE_TILE": C_}, {**blk, "ONE_TILE": one}, nw)
        comp(S.argmax_kernel, {"d_ptr": p, "rmin_ptr": f64, "scale_ptr": f64, "v_ptr": f64, "codes_ptr": "*i64",
                               **shape}, blk, nw)
    comp(S.scale_kernel, {"lo_ptr": f64, "hi_ptr": f64, "eps_ptr": f64, "scale_ptr": f64, "P": "i32", "BLOCK": C_},
         {"BLOCK": 256})
    comp(S.column_reduce_kernel, {"part_ptr": f64, "v_ptr": f64, "P": "i32", "K": "i32", "BLOCK_P": C_,
                                  "BLOCK_K": C_}, {"BLOCK_P": 64, "BLOCK_K": 64})
    print("compiled")
''')


def test_gpu_paths_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    if "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("Triton's ptxas is not available here")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]


QUANTIZE_SCRIPT = textwrap.dedent('''
    import re, subprocess, sys, tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource
    from fastrec.kernels import quantize as Q

    ptxas = get_ptxas(90).path
    C_ = "constexpr"
    for dt in ("fp32", "bf16"):
        p = "*" + dt
        sig = {"x_ptr": p, "cb_ptr": p, "norm_ptr": "*fp32", "codes_ptr": "*i64", "q_ptr": p, "dist_ptr": "*fp32",
               "res_ptr": "*fp32", "N": "i32", "K": "i32", "D": "i32", "L": "i32", "eps_dot": "fp32",
               "eps_acc": "fp32", "IN_REGS": C_, "WRITE_Q": C_, "WRITE_DIST": C_, "EMULATE_TF32": C_,
               "APPROX_ONLY": C_, "BLOCK_N": C_, "BLOCK_K": C_, "BLOCK_D": C_}
        # residual_encode (quantized) and nearest_code (distance) in registers at D = 64 and 128, and the
        # scratch path
        cases = [(d, True, (bn, bk, w, st), q) for d, (bn, bk, w, st) in ((64, (64, 64, 8, 2)), (128, (32, 32, 8, 2)))
                 for q in (True, False)] + [(256, False, Q._SCRATCH, True)]
        for d, in_regs, (bn, bk, warps, stages), want_q in cases:
            assert any(c.kwargs == {"BLOCK_N": bn, "BLOCK_K": bk} and c.num_warps == warps for c in
                       Q._prune(Q._CONFIGS, {}, BLOCK_D=d)) or not in_regs
            blocks = {"BLOCK_N": bn, "BLOCK_K": bk}
            k = triton.compile(ASTSource(fn=Q.encode_kernel, signature=sig, constexprs={
                "IN_REGS": in_regs, "WRITE_Q": want_q, "WRITE_DIST": not want_q, "EMULATE_TF32": False,
                "APPROX_ONLY": False,
                "BLOCK_D": d if in_regs else 64, **blocks}), target=GPUTarget("cuda", 90, 32),
                options={"num_warps": warps, "num_stages": stages})
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(k.asm["ptx"])
            out = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", f.name, "-o", "/dev/null"],
                                 capture_output=True, text=True).stderr
            spill = max(int(v) for v in re.findall(r"(\\d+) bytes spill", out))
            print(dt, d, want_q, "spill", spill)
    print("compiled")
''')


def test_quantize_kernel_compiles_for_sm90_without_spilling():
    """The tf32 encode kernel (the CUDA backend of nearest_code/residual_encode) for sm_90: no register spill
    (ptxas -v) at D = 64 and 128 in registers, nor on the scratch path (D > 128)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", QUANTIZE_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=600)
    if "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("Triton's ptxas is not available here")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
    spills = {tuple(line.split()[:3]): int(line.split()[-1]) for line in proc.stdout.splitlines() if "spill" in line}
    assert len(spills) == 10, proc.stdout
    assert all(v == 0 for v in spills.values()), spills
