"""The Triton kernels' GPU-only code (native half dots, TF32, autotuned block configs) compiled offline for an
sm_90 target: the interpreter runs none of it, and a kernel that does not compile would first fail on a GPU
box. Runs in a subprocess without TRITON_INTERPRET (Triton decides at import whether to interpret)."""

import os
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch

triton = pytest.importorskip("triton")

# Shared by the offline scripts: kernel signatures (topk's candidate scan, quantize's encode kernel, for
# operands of pointer type p) and the specialization a GPU launch gives a kernel.
SHARED_DEFS = textwrap.dedent('''
    def CANDIDATES_SIGNATURE(p):  # topk's candidates_kernel, queries and items of pointer type p
        return {"q_ptr": p, "it_ptr": p, "tau_ptr": "*fp32", "cnt_ptr": "*i32", "cs_ptr": "*fp32", "ci_ptr": "*i32",
                "U": "i32", "NI": "i32", "d": "i32", "chunk": "i32", "CAP": "i32", "UPCAST": "constexpr",
                "PRECISION": "constexpr", "BLOCK_U": "constexpr", "BLOCK_I": "constexpr", "BLOCK_D": "constexpr"}

    SPLIT_SIGNATURE = {"q_ptr": "*fp32", "ql_ptr": "*fp32", "it_ptr": "*fp32", "tau_ptr": "*fp32", "cnt_ptr": "*i32",
                       "cs_ptr": "*fp32", "ci_ptr": "*i32", "U": "i32", "NI": "i32", "d": "i32", "chunk": "i32",
                       "CAP": "i32", "BLOCK_U": "constexpr", "BLOCK_I": "constexpr", "BLOCK_D": "constexpr"}

    def runtime_attrs(fn, sig):
        """What Triton's JIT assumes on a GPU launch: 16-byte aligned pointers (every torch allocation is) and
        the feature widths (D, d, H, K, OUT: 64 to 4096 in the benchmark shapes) divisible by 16. Compiled
        without these, a kernel is another variant (no 16-byte vector loads, other register use)."""
        dims = {"D", "d", "H", "K", "OUT"}
        return {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a, t in sig.items()
                if t.startswith("*") or (a in dims and t in ("i32", "i64"))}

    def encode_signature(p):
        c = "constexpr"
        return {"x_ptr": p, "cb_ptr": p, "norm_ptr": "*fp32", "codes_ptr": "*i64", "q_ptr": p, "dist_ptr": "*fp32",
                "res_ptr": "*fp32", "N": "i32", "K": "i32", "D": "i32", "L": "i32", "eps_dot": "fp32",
                "eps_acc": "fp32", "IN_REGS": c, "WRITE_Q": c, "WRITE_DIST": c, "EMULATE_TF32": c,
                "APPROX_ONLY": c, "PRECISION": c, "RESOLVE": c, "BLOCK_N": c, "BLOCK_K": c, "BLOCK_D": c}
''')

SCRIPT = textwrap.dedent('''
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from fastrec.kernels import collab as C, fusion as F, sinkhorn as S, topk as T

    from triton._C.libtriton import ir
    from triton.compiler.compiler import make_backend

    def front_end(fn, sig, cx, num_warps):
        """Only the Python -> TTIR step (where a Python int without .to() fails), not the whole compile."""
        target = GPUTarget("cuda", 90, 32)
        backend = make_backend(target)
        options = backend.parse_options({"num_warps": num_warps})
        context = ir.context()
        ir.load_dialects(context)
        backend.load_dialects(context)
        ASTSource(fn=fn, signature=sig, constexprs=cx).make_ir(
            target, options, backend.get_codegen_implementation(options), backend.get_module_map(), context)

    def as_ones(fn, sig, cx):
        """The launch where every integer argument Triton may specialize is 1: the JIT then passes it as a
        constexpr Python int (the interpreter never does; an H200 run found K.to() failing at K = 1)."""
        sig, cx = dict(sig), dict(cx)
        for p in fn.params:
            if sig.get(p.name) in ("i32", "i64") and not p.do_not_specialize:
                sig[p.name], cx[p.name] = "constexpr", 1
        return sig, cx

    def comp(fn, sig, cx, num_warps=4, num_stages=3):
        triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx, attrs=runtime_attrs(fn, sig)),
                       target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": num_warps, "num_stages": num_stages})
        front_end(fn, *as_ones(fn, sig, cx), num_warps)

    C_ = "constexpr"
    for dt, up, prec in [("bf16", False, "ieee"), ("fp32", True, "tf32"), ("fp32", True, "tf32x3")]:
        p = "*" + dt
        comp(T.topk_kernel, {"q_ptr": p, "it_ptr": p, "exp_ptr": "*i64", "exi_ptr": "*i32", "ps_ptr": "*fp32",
                             "pi_ptr": "*i32", "U": "i32", "NI": "i32", "d": "i32", "nnz": "i32", "chunk": "i32",
                             "C": "i32", "k": "i32", "HAS_EX": C_, "UPCAST": C_, "PRECISION": C_, "BLOCK_U": C_,
                             "BLOCK_I": C_, "BLOCK_D": C_, "KP": C_},
             {"HAS_EX": True, "UPCAST": up, "PRECISION": prec, "BLOCK_U": 64, "BLOCK_I": 64, "BLOCK_D": 64,
              "KP": 32})
        if dt == "fp32":
            bu, bi, bd, warps, stages = T._split_blocks(64)
            comp(T.candidates_split_kernel, SPLIT_SIGNATURE, {"BLOCK_U": bu, "BLOCK_I": bi, "BLOCK_D": bd}, warps,
                 stages)
        bu, bi, bd, warps = T._candidate_blocks(64)
        comp(T.candidates_kernel, CANDIDATES_SIGNATURE(p),
             {"UPCAST": up, "PRECISION": prec, "BLOCK_U": bu, "BLOCK_I": bi, "BLOCK_D": bd}, warps)
        cfg = F._CONFIGS[-2]
        comp(F.gather_reduce_kernel, {"sem_ptr": p, "rows_ptr": "*i64", "w_ptr": p, "b_ptr": p, "live_ptr": "*i64",
                                      "out_ptr": "*fp32", "U": "i32", "D": "i32", "d": "i32", "HAS_BIAS": C_,
                                      "HAS_LIVE": C_, "UPCAST": C_, "PRECISION": C_, "BLOCK_U": C_, "BLOCK_D": C_,
                                      "BLOCK_DM": C_},
             {"HAS_BIAS": True, "HAS_LIVE": False, "UPCAST": up, "PRECISION": prec, "BLOCK_DM": 256, **cfg.kwargs},
             cfg.num_warps)
        comp(F.weight_grad_kernel, {"sem_ptr": p, "rows_ptr": "*i64", "g_ptr": "*fp32", "out_ptr": "*fp32",
                                    "U": "i32", "D": "i32", "d": "i32", "UPCAST": C_, "PRECISION": C_, "BLOCK_U": C_,
                                    "BLOCK_D": C_, "BLOCK_DM": C_},
             {"UPCAST": True, "PRECISION": prec, "BLOCK_U": 32, "BLOCK_D": 64, "BLOCK_DM": 64})
        comp(C.gather_linear_kernel, {"ids_ptr": "*i64", "x_ptr": p, "w_ptr": p, "b_ptr": p, "out_ptr": p,
                                      "N": "i32", "K": "i32", "OUT": "i32", "ROWS": "i32", "HAS_IDS": C_,
                                      "HAS_BIAS": C_, "GELU": C_, "UPCAST": C_, "PRECISION": C_, "BLOCK_N": C_,
                                      "BLOCK_O": C_, "BLOCK_K": C_},
             {"HAS_IDS": True, "HAS_BIAS": True, "GELU": True, "UPCAST": up, "PRECISION": prec,
              **C._LINEAR_CONFIGS[3].kwargs}, 8)
    # bf16x3: a bf16 table against the fp32 operand's three bf16 planes (fusion_dot's choice for those dtypes)
    comp(F.gather_reduce_kernel, {"sem_ptr": "*bf16", "rows_ptr": "*i64", "w_ptr": "*bf16", "b_ptr": "*fp32",
                                  "live_ptr": "*i64", "out_ptr": "*fp32", "U": "i32", "D": "i32", "d": "i32",
                                  "HAS_BIAS": C_, "HAS_LIVE": C_, "UPCAST": C_, "PRECISION": C_, "BLOCK_U": C_,
                                  "BLOCK_D": C_, "BLOCK_DM": C_},
         {"HAS_BIAS": True, "HAS_LIVE": True, "UPCAST": False, "PRECISION": "bf16x3", "BLOCK_U": 64, "BLOCK_D": 32,
          "BLOCK_DM": 64})
    comp(F.weight_grad_kernel, {"sem_ptr": "*bf16", "rows_ptr": "*i64", "g_ptr": "*bf16", "out_ptr": "*fp32",
                                "U": "i32", "D": "i32", "d": "i32", "UPCAST": C_, "PRECISION": C_, "BLOCK_U": C_,
                                "BLOCK_D": C_, "BLOCK_DM": C_},
         {"UPCAST": False, "PRECISION": "bf16x3", "BLOCK_U": 32, "BLOCK_D": 64, "BLOCK_DM": 64})
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
    # the remaining kernels, in the block sizes their launchers pick on a GPU
    from fastrec.kernels import embedding_optim as E, trie as R
    for dt in ("fp32", "bf16"):
        p = "*" + dt
        for from_rank in (True, False):
            comp(C.splice_kernel, {"ids_ptr": "*i64", "slot_ptr": "*i64", "ph_ptr": "*i64", "pos_ptr": "*i64",
                                   "w_ptr": p, "v_ptr": p, "out_ptr": p, "n": "i32", "H": "i32", "V": "i32",
                                   "N": "i32", "S": "i32", "FROM_RANK": C_, "BLOCK_R": C_, "BLOCK_H": C_},
                 {"FROM_RANK": from_rank, "BLOCK_R": 16, "BLOCK_H": 256})
        for adam in (True, False):
            comp(E.sparse_update_kernel, {"w_ptr": p, "m_ptr": "*fp32", "v_ptr": "*fp32", "g_ptr": p, "pos_ptr": "*i64",
                                          "seg_ptr": "*i64", "rows_ptr": "*i64", "d": "i32", "num_rows": "i32",
                                          "lr": "fp32", "beta1": "fp32", "beta2": "fp32", "eps": "fp32",
                                          "weight_decay": "fp32", "step_size": "fp32", "bc2_sqrt": "fp32",
                                          "ADAM": C_, "BLOCK_D": C_}, {"ADAM": adam, "BLOCK_D": 64})
        for g in ("*i64", "*i32"):
            comp(R.trie_mask_kernel, {"scores_ptr": p, "gen_ptr": g, "indptr_ptr": "*i64", "tokens_ptr": "*i64",
                                      "children_ptr": "*i64", "out_ptr": p, "V": "i32", "G": "i32", "S": "i32",
                                      "E": "i32", "fill": "fp32", "STEPS": C_, "BLOCK_V": C_},
                 {"STEPS": 14, "BLOCK_V": 1024})
    # the quantize kernel (its spill test below compiles it at many block sizes; here once, and with ones)
    from fastrec.kernels import quantize as Q
    comp(Q.encode_kernel, encode_signature("*fp32"),
         {"IN_REGS": False, "WRITE_Q": True, "WRITE_DIST": True, "EMULATE_TF32": False, "APPROX_ONLY": False,
          "PRECISION": "tf32", "RESOLVE": False, "BLOCK_N": 64, "BLOCK_K": 64, "BLOCK_D": 64})
    print("compiled")
''')


def _run_offline(code: str) -> str:
    """Runs `code` from a file (@triton.jit needs its source in one) without the interpreter; it must print
    "compiled" at its end. Returns its stdout; skips where Triton's ptxas is missing."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, f.name], capture_output=True, text=True, env=env, timeout=600)
    os.unlink(f.name)
    if "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("Triton's ptxas is not available here")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
    return proc.stdout


def test_gpu_paths_compile_for_sm90():
    _run_offline(SHARED_DEFS + SCRIPT)


# Compiles a kernel for sm_90 and returns the bytes a thread spills (ptxas -v): the start of the spill scripts.
SPILL_PRELUDE = textwrap.dedent('''
    import re, subprocess, tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    ptxas = get_ptxas(90).path
    C_ = "constexpr"

    LAST = {}  # the PTX of the last compile

    def spill_bytes(fn, sig, cx, num_warps, num_stages):
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx, attrs=runtime_attrs(fn, sig)),
                           target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": num_warps, "num_stages": num_stages})
        LAST["ptx"] = k.asm["ptx"]
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(k.asm["ptx"])
        out = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", f.name, "-o", "/dev/null"],
                             capture_output=True, text=True).stderr
        return max(int(v) for v in re.findall(r"(\\d+) bytes spill", out))
''')


def _run_spill_script(body: str) -> dict[str, int]:
    """Runs SPILL_PRELUDE + body offline; body prints "<case...> spill <bytes>" lines."""
    out = _run_offline(SHARED_DEFS + SPILL_PRELUDE + textwrap.dedent(body))
    return {" ".join(line.split()[:-2]): int(line.split()[-1]) for line in out.splitlines() if " spill " in line}


QUANTIZE_SCRIPT = '''
    from fastrec.kernels import quantize as Q

    for dt in ("fp32", "bf16"):
        p = "*" + dt
        sig = encode_signature(p)
        def spill(in_regs, d, blocks, warps, stages, want_q):  # the default: tf32x3 dots, top-3 resolve
            return spill_bytes(Q.encode_kernel, sig, {
                "IN_REGS": in_regs, "WRITE_Q": want_q, "WRITE_DIST": not want_q, "EMULATE_TF32": False,
                "APPROX_ONLY": False, "PRECISION": "tf32x3", "RESOLVE": True, "BLOCK_D": d if in_regs else 64,
                **blocks}, warps, stages)

        # residual_encode (quantized) and nearest_code (distance) in registers at D = 64 and 128: the first
        # autotune config (after pruning) that spills nothing; which one it is depends on the Triton version
        for d in (64, 128):
            for want_q in (True, False):
                least = None
                for c in Q._prune(Q._CONFIGS, {}, BLOCK_D=d):
                    s = spill(True, d, c.kwargs, c.num_warps, c.num_stages, want_q)
                    least = s if least is None else min(least, s)
                    if s == 0:
                        break
                print(dt, d, want_q, "spill", least)
        bn, bk, warps, stages = Q._SCRATCH  # the scratch path (D > 128) has one config
        print(dt, 256, True, "spill", spill(False, 256, {"BLOCK_N": bn, "BLOCK_K": bk}, warps, stages, True))
    print("compiled")
'''


def test_quantize_kernel_compiles_for_sm90_without_spilling():
    """The encode kernel (the CUDA backend of nearest_code/residual_encode; tf32x3 dots, top-3 resolve) for
    sm_90: at D = 64 and 128 in registers some autotune config spills no register (ptxas -v), nor does the
    scratch path (D > 128). One exception is allowed up to 16 bytes: under Triton 3.6 every config of bf16
    residual_encode at D = 128 spills at least 12 (three registers; Triton 3.8 none)."""
    spills = _run_spill_script(QUANTIZE_SCRIPT)
    assert len(spills) == 10, spills
    assert all(v <= 16 for v in spills.values()) and sum(v > 0 for v in spills.values()) <= 1, spills


SPILL_SCRIPT = '''
    from fastrec.kernels import fusion as F, topk as T

    def spill(name, fn, sig, cx, num_warps, num_stages):
        print(name, "spill", spill_bytes(fn, sig, cx, num_warps, num_stages))
        print(name, "mma", LAST["ptx"].count("mma"))  # tensor-core instructions (wgmma or mma.sync)

    for dt in ("fp32", "bf16"):
        p = "*" + dt
        for kp in (16, 32, 64, 128):
            bu, bi, bd, warps = T._config(kp, 64)
            spill(f"topk-{dt}-k{kp}", T.topk_kernel,
                  {"q_ptr": p, "it_ptr": p, "exp_ptr": "*i64", "exi_ptr": "*i32", "ps_ptr": "*fp32", "pi_ptr": "*i32",
                   "U": "i32", "NI": "i32", "d": "i32", "nnz": "i32", "chunk": "i32", "C": "i32", "k": "i32",
                   "HAS_EX": C_, "UPCAST": C_, "PRECISION": C_, "BLOCK_U": C_, "BLOCK_I": C_, "BLOCK_D": C_, "KP": C_},
                  {"HAS_EX": True, "UPCAST": dt == "fp32", "PRECISION": "tf32x3" if dt == "fp32" else "ieee",
                   "BLOCK_U": bu, "BLOCK_I": bi, "BLOCK_D": bd, "KP": kp}, warps, 3)
        for c in T.SPLIT_CONFIGS if dt == "fp32" else []:  # the fp32 tf32x3 scan, every config autotune may pick
            bu, bi = c.kwargs["BLOCK_U"], c.kwargs["BLOCK_I"]
            spill(f"topk_split-{bu}x{bi}-w{c.num_warps}-s{c.num_stages}", T.candidates_split_kernel, SPLIT_SIGNATURE,
                  {"BLOCK_U": bu, "BLOCK_I": bi, "BLOCK_D": 64}, c.num_warps, c.num_stages)
        for c in T.CANDIDATE_CONFIGS:  # every config autotune may pick
            bu, bi = c.kwargs["BLOCK_U"], c.kwargs["BLOCK_I"]
            spill(f"topk_candidates-{dt}-{bu}x{bi}-w{c.num_warps}", T.candidates_kernel, CANDIDATES_SIGNATURE(p),
                  {"UPCAST": dt == "fp32", "PRECISION": "tf32x3" if dt == "fp32" else "ieee",
                   "BLOCK_U": bu, "BLOCK_I": bi, "BLOCK_D": T._candidate_block_d(64)}, c.num_warps, c.num_stages)
        for mode in (0, 1, 2):
            bn, bj, bk, warps, stages = F.fuse_blocks(256)
            spill(f"fuse_gather-{dt}-mode{mode}", F.fuse_gather_kernel,
                  {"inv_ptr": "*i64", "rows_ptr": "*i64", "id_ptr": p, "red_ptr": "*fp32", "fw_ptr": p, "fb_ptr": p,
                   "out_ptr": p, "N": "i32", "d": "i32", "MODE": C_, "HAS_FB": C_, "BLOCK_N": C_, "BLOCK_J": C_,
                   "BLOCK_K": C_}, {"MODE": mode, "HAS_FB": True, "BLOCK_N": bn, "BLOCK_J": bj, "BLOCK_K": bk},
                  warps, stages)
    print("compiled")
'''


def test_topk_and_fuse_gather_gpu_blocks_spill_nothing():
    """topk_scores (every k bracket of the insertion scan, and the threshold scheme's candidate scan) and
    fuse_gather (every mode) in the blocks their launchers pick on a GPU compile for sm_90 without a register
    spill (ptxas -v): a spill there costs local-memory traffic in the inner loop (the old 4-warp top-k spilled up
    to 896 bytes, the old fuse_gather over 500; the candidate scan with BLOCK_D = 64, 240). Every top-k variant runs
    its score GEMM on tensor cores (tf32x3 for fp32; the first H200 run's IEEE dots were FMA loops). The candidate
    scan's first autotune config (its default) spills nothing; the larger ones spill nothing under Triton 3.6 (the
    H200's) and up to about 270 bytes under 3.8, which autotune weighs (timed, a spill costs what it costs)."""
    out = _run_offline(SHARED_DEFS + SPILL_PRELUDE + textwrap.dedent(SPILL_SCRIPT))
    spills = {line.split()[0]: int(line.split()[-1]) for line in out.splitlines() if " spill " in line}
    mma = {line.split()[0]: int(line.split()[-1]) for line in out.splitlines() if " mma " in line}
    from fastrec.kernels.topk import CANDIDATE_CONFIGS, SPLIT_CONFIGS

    assert len(spills) == 14 + 2 * len(CANDIDATE_CONFIGS) + len(SPLIT_CONFIGS), spills
    c = CANDIDATE_CONFIGS[0]
    first = f"-{c.kwargs['BLOCK_U']}x{c.kwargs['BLOCK_I']}-w{c.num_warps}"
    tuned = [name for name in spills if name.startswith("topk_candidates") and not name.endswith(first)]
    assert all(v == 0 for name, v in spills.items() if name not in tuned), spills
    assert all(v <= 320 for name, v in spills.items() if name in tuned), spills
    assert all(v > 0 for name, v in mma.items() if name.startswith("topk")), mma


FUSION_SCRIPT = '''
    import torch
    from fastrec.kernels import fusion as F

    for scheme in F.FUSION_DOTS:  # the default (bf16x3) and the one FASTREC_FUSION_DOT=tf32x3 takes
        os.environ["FASTREC_FUSION_DOT"] = scheme
        upcast, prec = F.fusion_dot(torch.bfloat16, torch.float32)  # what the launchers pass on a GPU
        assert prec == scheme, prec
        op = "*bf16" if prec == "bf16x3" else "*fp32"  # the fp32 operand, or its bf16 planes
        red = {"sem_ptr": "*bf16", "rows_ptr": "*i64", "w_ptr": op, "b_ptr": "*fp32", "live_ptr": "*i64",
               "out_ptr": "*fp32", "U": "i32", "D": "i32", "d": "i32", "HAS_BIAS": C_, "HAS_LIVE": C_, "UPCAST": C_,
               "PRECISION": C_, "BLOCK_U": C_, "BLOCK_D": C_, "BLOCK_DM": C_}
        grad = {"sem_ptr": "*bf16", "rows_ptr": "*i64", "g_ptr": op, "out_ptr": "*fp32", "U": "i32", "D": "i32",
                "d": "i32", "UPCAST": C_, "PRECISION": C_, "BLOCK_U": C_, "BLOCK_D": C_, "BLOCK_DM": C_}
        flags = {"UPCAST": upcast, "PRECISION": prec}
        grad_flags = {"UPCAST": upcast or prec != "bf16x3", "PRECISION": prec}
        for d in (64, 256):
            for name, tuned, sig, prune, cx, fl in [
                    ("gather_reduce", F.gather_reduce_tuned, red, F._prune_reduce,
                     {"HAS_BIAS": True, "HAS_LIVE": True, **flags}, flags),
                    ("weight_grad", F.weight_grad_tuned, grad, F._prune_grad, grad_flags, grad_flags)]:
                least = None
                for c in prune(tuned.configs, {"d": d}, **fl):
                    s = spill_bytes(tuned.fn, sig, {**cx, "BLOCK_DM": d, **c.kwargs}, c.num_warps, c.num_stages)
                    print(scheme, name, d, c.kwargs["BLOCK_U"], c.kwargs["BLOCK_D"], c.num_warps, "mma",
                          LAST["ptx"].count("mma"))
                    least = s if least is None else min(least, s)
                    if s == 0:
                        break
                print(scheme, name, d, "spill", least)
    print("compiled")
'''


def test_fusion_half_table_fp32_weight_dots_run_on_tensor_cores_without_spilling():
    """KIRec's usual dtypes, a bf16 semantic table against an fp32 reduction weight (and gradient), take bf16x3
    dots (fusion_dot; tf32x3 with FASTREC_FUSION_DOT=tf32x3): every autotune config tried in either scheme
    compiles to tensor-core instructions (wgmma or mma.sync; IEEE dots, the first H200 run's, are FMA loops), and
    at d = 64 and 256 some config of each kernel spills no register (ptxas -v, sm_90)."""
    out = _run_offline(SHARED_DEFS + "import os\n" + SPILL_PRELUDE + textwrap.dedent(FUSION_SCRIPT))
    mma = [int(line.split()[-1]) for line in out.splitlines() if " mma " in line]
    spills = {" ".join(line.split()[:-2]): int(line.split()[-1]) for line in out.splitlines() if " spill " in line}
    assert mma and all(m > 0 for m in mma), out
    assert len(spills) == 8 and all(v == 0 for v in spills.values()), spills


def _tf32(x):
    """Round fp32 to tf32 (10 mantissa bits), to nearest with ties away from zero (cvt.rna.tf32.f32)."""
    return ((x.view(torch.int32) + 0x1000) & ~0x1FFF).view(torch.float32)


def test_dot_scheme_uses_tensor_cores_wherever_fp32_accuracy_holds(monkeypatch):
    """Matching half dtypes: native dots; a half operand against fp32: tf32x3; fp32 x fp32: IEEE unless
    FASTREC_TF32=1; the interpreter: fp32. And the tf32x3 claim itself: a half value is exact in tf32, so
    s * hi(w) + s * lo(w) misses s * w by at most 2^-22 of it."""
    from fastrec.kernels import dot_scheme

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("FASTREC_TF32", raising=False)
    bf, h, f = torch.bfloat16, torch.float16, torch.float32
    assert dot_scheme(bf, bf) == dot_scheme(h, h) == (False, "ieee")
    assert dot_scheme(bf, f) == dot_scheme(f, h) == dot_scheme(bf, h) == (True, "tf32x3")
    assert dot_scheme(f, f) == (True, "ieee")
    monkeypatch.setenv("FASTREC_TF32", "1")
    assert dot_scheme(bf, f) == dot_scheme(f, f) == (True, "tf32") and dot_scheme(bf, bf) == (False, "ieee")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dot_scheme(bf, bf) == dot_scheme(bf, f) == (True, "ieee")

    gen = torch.Generator().manual_seed(0)
    for half in (bf, h):
        a = (torch.randn(100_000, generator=gen) * 4.0 ** torch.randint(-6, 6, (100_000,), generator=gen)).to(half)
        a = a.float()
        w = torch.randn(100_000, generator=gen) * 4.0 ** torch.randint(-6, 6, (100_000,), generator=gen)
        assert torch.equal(_tf32(a), a)  # exact in tf32: its low part is zero
        hi = _tf32(w)
        lo = _tf32(w - hi)
        exact = a.double() * w.double()
        err = (a.double() * hi.double() + a.double() * lo.double() - exact).abs()
        assert (err <= 2.0 ** -22 * exact.abs()).all()
        assert torch.equal(a * hi, (a.double() * hi.double()).float())  # products exact in fp32


def test_fusion_wide_configs_are_tuned_for_bf16x3_only():
    """The wide slices (_BF16X3_CONFIGS) join the tuning only for bf16x3, whose bf16 tiles fit them (tf32x3's upcast
    tiles spilled there); the other schemes tune the configs they had."""
    from fastrec.kernels import fusion as F

    every = F.gather_reduce_tuned.configs
    for prune in (F._prune_reduce, F._prune_grad):
        kept = prune(every, {"d": 64}, UPCAST=False, PRECISION="bf16x3")
        assert any(c is w for c in kept for w in F._BF16X3_CONFIGS), prune
        for flags in ({"UPCAST": True, "PRECISION": "tf32x3"}, {"UPCAST": False, "PRECISION": "ieee"}):
            kept = prune(every, {"d": 64}, **flags)
            assert kept and all(c in F._CONFIGS for c in kept), (prune, flags)


def test_fp32_gather_linear_autotune_keeps_small_k_blocks():
    """fp32 operands (FMA dots) never try BLOCK_K = 64, which spilled 12 KB a thread; half operands keep all."""
    from fastrec.kernels import collab

    fp32 = collab._prune_linear(collab._LINEAR_CONFIGS, {}, UPCAST=True)
    assert fp32 and all(c.kwargs["BLOCK_K"] <= 32 for c in fp32)
    assert collab._prune_linear(collab._LINEAR_CONFIGS, {}, UPCAST=False) == collab._LINEAR_CONFIGS


TF32X3_SCRIPT = textwrap.dedent("""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    @triton.jit
    def dot(a_ptr, b_ptr, c_ptr, P: tl.constexpr):
        r = tl.arange(0, 64)
        a = tl.load(a_ptr + r[:, None] * 64 + r[None, :])
        b = tl.load(b_ptr + r[:, None] * 64 + r[None, :])
        tl.store(c_ptr + r[:, None] * 64 + r[None, :], tl.dot(a, b, input_precision=P))

    for p in ("tf32", "tf32x3"):
        k = triton.compile(ASTSource(fn=dot, signature={"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32",
                                                        "P": "constexpr"}, constexprs={"P": p}),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        print(p, k.asm["ptx"].count("wgmma.mma_async"))
    print("compiled")
""")


def test_tf32x3_dots_are_three_tensor_core_dots_on_sm90():
    """The quantize kernel's exactness bound and topk's fp32-level scores assume tf32x3 really is three tf32
    dots over a hi/lo split: on sm_90 its PTX must hold three times the wgmma of one tf32 dot (a Triton that
    lowered it to one dot would fail here, not silently loosen the bound)."""
    out = _run_offline(TF32X3_SCRIPT)
    counts = dict(line.split() for line in out.splitlines() if line.startswith("tf32"))
    assert int(counts["tf32"]) > 0 and int(counts["tf32x3"]) == 3 * int(counts["tf32"]), counts


PARALLEL_COMPILE_SCRIPT = '''
import warnings

import torch
import triton
import triton.language as tl
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver

import fastrec.kernels as K


class SM90Driver:  # names an sm_90 target and nothing else: kernels compile, none can launch
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_benchmarker(self):
        raise RuntimeError("no GPU")


driver.set_active(SM90Driver())


def prune(configs, named_args, **kwargs):  # as the real ones: reads a launch kwarg, drops a config
    return [c for c in configs if c.kwargs["BLOCK"] <= kwargs["LIMIT"]]


@triton.autotune([triton.Config({"BLOCK": b}, num_warps=w) for b, w in [(16, 1), (32, 2), (64, 4), (128, 4)]],
                 key=["n", "d"], prune_configs_by={"early_config_prune": prune})
@triton.jit(do_not_specialize=["n"])
def scale(x_ptr, y_ptr, n, d, one, s, LIMIT: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x_ptr + i * one, mask=i < n * d).to(tl.float32) * s
    tl.store(y_ptr + i, v.to(tl.float16) if HALF else v, mask=i < n * d)


def launch_keys(args, kwargs, grid):
    """The cache misses of each config autotune would time for this launch (the kernel's own run, as
    Autotuner._bench calls it, with the launch itself left out)."""
    misses = []
    knobs.runtime.jit_cache_hook = lambda *a, **k: misses.append(k["key"]) or True  # True: skip the compile
    scale.nargs = dict(zip(scale.arg_names, args))
    configs = scale.prune_configs({**kwargs, "grid": grid, "warmup": False})
    for c in configs:
        scale.fn.run(*args, grid=grid, warmup=True, **kwargs, **c.all_kwargs())
    knobs.runtime.jit_cache_hook = None
    return len(configs), len(misses)


grid = lambda meta: (4,)  # noqa: E731
x = torch.randn(8 * 48)
for y, kw in [(torch.empty(8 * 48), {"LIMIT": 64, "HALF": False}),
              (torch.empty(8 * 48, dtype=torch.float16), {"LIMIT": 128, "HALF": True})]:
    args = (x, y, 8, 48, 1, 0.5)  # d divisible by 16 and one == 1: specialized as a GPU launch would be
    print("before", *launch_keys(args, kw, grid))
    K.compile_configs(scale, grid, args, kw, workers=2)
    print("after", *launch_keys(args, kw, grid))
    assert K.tuning_key(scale, args, kw) in K._COMPILED
n_compiled = len(K._COMPILED)
K.compile_configs(scale, grid, args, kw, workers=2)  # a key seen before: nothing
assert len(K._COMPILED) == n_compiled
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    K.compile_configs(scale, grid, (x, y, 7, 48, 1, 0.5), {"LIMIT": 64, "HALF": False, "BOGUS": 1}, workers=2)
print("warned", len(caught), str(caught[0].message) if caught else "")
print("compiled")
'''


def test_autotune_configs_compile_in_parallel_under_the_launch_key():
    """`launch_autotuned` compiles a new tuning key's configs in threads before autotune times them one by one
    (the first call of an op on a GPU is mostly compiles). Offline, with a stand-in driver naming sm_90: after
    `compile_configs`, each config autotune keeps (after pruning) is in the kernel's cache under the exact key its
    launch looks up (the specialization of d % 16 == 0 and an argument equal to 1 included), so autotune compiles
    nothing itself; before it, every one of them was a miss. A key seen before does nothing; a failure warns."""
    out = _run_offline(PARALLEL_COMPILE_SCRIPT)
    rows = [line.split() for line in out.splitlines() if line.startswith(("before", "after"))]
    assert rows == [["before", "3", "3"], ["after", "3", "0"], ["before", "4", "4"], ["after", "4", "0"]], out
    assert "warned 1 fastrec: compiling scale's autotune configs in parallel failed" in out, out


class _Launches:
    """Stands in for an autotuned kernel: records `kernel[grid](*args, **kwargs)` launches."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((grid, args, kwargs))


@pytest.mark.parametrize("value", ["1", "0", "yes"])
def test_launch_autotuned_launches_once_and_checks_its_switch(value, monkeypatch):
    """launch_autotuned is the launch itself, with its arguments untouched (the parallel compile is skipped
    under the interpreter, where nothing compiles); FASTREC_PARALLEL_COMPILE takes 1 or 0, anything else is a
    ValueError naming it, before any launch."""
    from fastrec import kernels as K

    monkeypatch.setenv("FASTREC_PARALLEL_COMPILE", value)
    monkeypatch.setattr(K, "interpret", lambda: True)
    monkeypatch.setattr(K, "compile_configs", lambda *a: pytest.fail("compiled under the interpreter"))
    kernel = _Launches()
    if value == "yes":
        with pytest.raises(ValueError, match="FASTREC_PARALLEL_COMPILE"):
            K.launch_autotuned(kernel, (3,), 1, 2, A=4)
        assert kernel.calls == []
    else:
        K.launch_autotuned(kernel, (3,), 1, 2, A=4)
        assert kernel.calls == [((3,), (1, 2), {"A": 4})]
