"""hwlab.formats imports and quantizes with numpy alone, bit-identical to the numba path."""
import subprocess
import sys
import textwrap

import numpy as np

import hwlab

BLOCKED = ("numba", "scipy", "matplotlib", "torch", "safetensors")


def test_formats_work_without_optional_packages(tmp_path, rng):
    w = (rng.standard_normal((16, 256)) * 0.02).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    script = textwrap.dedent(f"""
        import sys
        for name in {BLOCKED!r}:
            sys.modules[name] = None  # any import of it now raises ImportError
        import numpy as np
        from hwlab.formats import quantize, get_format, jit
        assert not jit.USE_NUMBA
        w = np.load({str(tmp_path / "w.npy")!r})
        for name in ("int4", "nf4", "bitmod_fp4", "fp8_e4m3", "int3_asym"):
            np.save({str(tmp_path)!r} + "/" + name + ".npy", quantize(w, name).dequantize())
        print(get_format("fp4_e2m1").encode([0.26, -7.0]).tolist())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[1, 15]"
    for name in ("int4", "nf4", "bitmod_fp4", "fp8_e4m3", "int3_asym"):
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"), hwlab.quantize(w, name).dequantize(),
                                      err_msg=f"numpy-only and numba quantizers differ for {name}")
