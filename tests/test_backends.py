"""`import fastrec` without the compiled extension: one warning, every op on its reference."""

import subprocess
import sys
import textwrap


def test_import_without_extension_falls_back_to_reference():
    script = textwrap.dedent("""
        import importlib.abc, sys, warnings

        class HideExtension(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "fastrec._C":
                    raise ImportError("hidden by the test")
                return None

        sys.meta_path.insert(0, HideExtension())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import fastrec
        messages = [str(w.message) for w in caught if "fastrec._C is not built" in str(w.message)]
        assert len(messages) == 1, messages
        import torch
        from fastrec import reference
        info = fastrec.backends()
        assert info["cpu"]["nearest_code"] == "reference", info
        x, cb = torch.randn(50, 8), torch.randn(10, 8)
        index, dist = fastrec.ops.nearest_code(x, cb)
        assert torch.equal(index, reference.nearest_code(x, cb)[0])
        try:
            fastrec.ops.nearest_code(torch.full((2, 8), float("nan")), cb)
        except ValueError as exc:
            assert "x contains NaN" in str(exc)
        else:
            raise AssertionError("NaN accepted by the fallback")
        codes, q = fastrec.ops.residual_encode(x, torch.randn(2, 10, 8))
        assert codes.shape == (50, 2)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
