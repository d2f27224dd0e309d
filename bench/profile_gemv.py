"""One matmul of a format at K=8192, N=28672 and M rows (default 1) through ``hwlab.kernels.matmul``,
for a profiler.

    ncu --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        --section MemoryWorkloadAnalysis --section LaunchStats -k regex:gemv_words_kernel -s 2 -c 1 \\
        python bench/profile_gemv.py int4          # on the GPU machine: the third call is profiled
    ncu ... -k regex:tile_kernel -s 2 -c 1 python bench/profile_gemv.py int4 16
    ncu ... -k regex:mixed_gemv_async -s 2 -c 1 python bench/profile_gemv.py mixed_2_4 1 async
    ncu ... -k regex:int_mma -s 2 -c 1 python bench/profile_gemv.py int4 1 mma

A third argument names a ``mixed_matmul`` mode (``sync``, ``async``, ``cupy``) for ``mixed_2_4``, or ``mma``:
the CuPy tensor-core kernel (``cupy_kernels.int_mma_cupy``) whatever ``matmul`` would choose.
"""
from __future__ import annotations

import sys

import numpy as np

import hwlab.formats as F
from hwlab import kernels
from hwlab.kernels.async_mixed import mixed_matmul
from hwlab.kernels.testing import repeat_rows

K, N = 8192, 28672  # the largest benchmark layer (bench/gpu_kernels.py)


def main(argv=None) -> int:
    import torch

    args = argv if argv is not None else sys.argv[1:]
    fmt = args[0] if args else "int4"
    m = int(args[1]) if len(args) > 1 else 1
    mode = args[2] if len(args) > 2 else None
    rng = np.random.default_rng(0)
    small = F.quantize((rng.standard_normal((256, K)) * 0.02).astype(np.float32), fmt)
    dev = repeat_rows(small, N).to("cuda")
    x = torch.randn(m, K, device="cuda", dtype=torch.float16)
    for _ in range(3):
        if mode == "mma":
            from hwlab.kernels.cupy_kernels import int_mma_cupy

            y = int_mma_cupy(x, dev)
        else:
            y = kernels.matmul(x, dev) if mode is None else mixed_matmul(x, dev, mode=mode)
    torch.cuda.synchronize()
    print(fmt, mode or "", kernels.explain(dev, m), float(y.float().abs().sum()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
