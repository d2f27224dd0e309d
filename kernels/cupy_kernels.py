"""CUDA C++ kernels through CuPy (``cupy.RawModule``): the ``mixed_2_4`` cp.async GEMV, the TRIP dp4a matmul and
the small-batch integer matmul on tensor cores.

:func:`mixed_gemv_cupy`
    ``y = x @ W^T`` for M = 1 and a ``mixed_2_4`` :class:`~hwlab.kernels.DeviceTensor`
    (``kernels/cuda/mixed_gemv_async.cu``): one warp per row, each row's packed arrays copied into
    shared memory with ``cp.async`` one row ahead of the row being decoded (double buffering), x
    staged once per block; fp32 accumulation, the algebra of ``triton_kernels.gemv_mixed_kernel``.
:func:`trip_matmul_cupy`
    exact int32 ``acc = x_codes @ w^T`` of int8 activation codes and int4 weight words
    (``kernels/cuda/trip_dp4a.cu``, ``dp4a``), bit-exact against :func:`hwlab.sim.trip.integer_matmul`.
:func:`int_mma_cupy`
    fp16 ``y = x @ W^T`` for M <= 16 and integer codes in whole words (int2, int4, int8, with or without zero
    points) or 4-bit codes of one 16-entry table (nf4, the FP4 splits; ``kernels/cuda/int_mma.cu``):
    ``mma.sync`` m16n8k16 with the weights decoded straight into the A fragment registers (integer codes by the
    magic-number pairs, table codes by one shared-memory read a byte) and x staged once per block in B-fragment
    order (:func:`mma_fragment_k`).

CuPy is imported only when a kernel is called (``pip install cupy-cuda13x``, or the ``gpu`` extra).
Torch tensors are shared by their raw device pointers (no copies), and the kernels run on torch's
current stream. Modules, kernel handles and launch parameters are cached (per device, per tensor):
a call allocates only its output. The argument checks are plain Python and run before CuPy is
touched, so they raise the same errors on a machine without a GPU.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .async_mixed import kernel_pointer, stream_names
from .device import DeviceTensor
from .dispatch import OUT_MAX, split_value_scale, split_workspace, table_fits_binary16

CUDA_DIR = Path(__file__).with_name("cuda")
MIXED_SOURCE, TRIP_SOURCE, MMA_SOURCE = "mixed_gemv_async.cu", "trip_dp4a.cu", "int_mma.cu"
PRELUDE = "prelude.cuh"  # put in front of every source (kernel_source)
NVRTC_OPTIONS = ("-std=c++17",)
MIXED_STAGES = (2, 3)  # instantiated pipeline depths (rows in flight per warp, counting the one decoded)
DEFAULT_STAGES = 2  # double buffering
MIXED_WARPS = 8  # warps (rows at a time) per block; fewer when shared memory is short
MIXED_BLOCKS_PER_SM = 2  # __launch_bounds__(256, 2): registers allow two blocks of 8 warps
TRIP_MB = (1, 2, 4, 8)  # activation rows per pass of the TRIP kernel
TRIP_WARPS = 8
TRIP_MAX_M = 64
TRIP_K_MULTIPLE = 32
TRIP_ACC_BOUND = 1905  # |x| <= 127 times the +8-offset weight byte <= 15: |acc| <= 1905 K before the correction
X_PAD = 4  # floats after each group of x in shared memory (mixed_gemv_async.cu's X_PAD)
FP16_OUT_MAX = 65504.0
SM90_SHARED_PER_BLOCK, SM90_SHARED_PER_SM = 232448, 233472  # cudaDevAttrMaxSharedMemoryPerBlockOptin, ..PerMultiprocessor
# int_mma.cu tiles (module constants, so that bench/cupy_mma_probe.py can time others)
MMA_BITS = (2, 4, 8)  # code widths of whole words it decodes (half_pairs.int_pair_constants)
MMA_BATCH_TILES = (1, 2, 4, 8)  # batch tiles of 8 rows (m16n8k16's N) a kernel is built for: NJ
MMA_MAX_M = 64  # batch rows int_mma_cupy takes (matmul: dispatch.CUPY_MMA_ROWS)
# batch tiles an M-block holds at most: x of more rows is cut into M-blocks of 8 x this many rows along the grid's y,
# each staging its own rows (8: one block of eight tiles for M = 33-64). H100, CUDA graph, K=8192 N=28672: one
# eight-tile block at M = 64 took 436.6 us (int4) and 473.3 (nf4) (bench/results/cupy_mma_probe_h100_run15_call1.log),
# two M-blocks of four 299.0 and 414.0 (call 2; four tiles at M = 32: 121.3 and 158.2). Eight tiles stage x for half
# the K range a block (16 splits, not 8), so twice the chunks' split-K partial sums are added into the workspace
MMA_M_BLOCK_TILES = 4
MMA_WORDS = (4, 2, 1)  # words a lane loads per row and chunk (a 16, 8 or 4-byte vector): the largest that fits a group
MMA_WARPS = 8  # warps a block (at most MMA_WARPS_MAX: the kernel's __launch_bounds__(256))
MMA_WARPS_MAX = 8
MMA_TILES = 1  # 16-row tiles a warp decodes at once (2: x's fragments read once for 32 rows)
# chunks a warp decodes while the loads of the next as many are in flight (two register sets that swap roles), by
# batch tiles of 8 (NJ). H200, CUDA graph, int4 K=8192 N=28672 (bench/results/cupy_mma_probe_h200_run13_call3.log):
# one tile: M=1 42.0 us at 2 against 44.3 at 3 and 49.0 at 1, M=4 46.5 against 48.5 and 55.3; two tiles: M=16
# 71.3 at 3 against 77.0 at 2 and 73.9 at 1. Four and eight tiles (M = 17-64) are not timed at other depths: at 1
# they take 105-107 and 145-149 registers (int4, nf4; nvcc 13, sm_90), so four keep two blocks an SM and eight one;
# four spill at 2 (and int4_asym's zero points, 8 bytes, at 1)
MMA_PREFETCH = {1: 2, 2: 3, 4: 1, 8: 1}
# at most this many with zero points: int4_asym's two-tile kernel takes 150 registers at D = 3 (one block an SM
# instead of MMA_BLOCKS_PER_SM), 122 at 2 (nvcc 13, sm_90; tests/test_cupy_mma.py checks every shipped kernel)
MMA_ZERO_POINT_PREFETCH = 2
# cp.async stages of code words by batch tiles (0: the register bursts above): A - 1 chunks of each row in flight
# through a warp's ring in shared memory (A x MT x 256 V bytes a warp). Off: slower than the register bursts
# everywhere it was timed (H100, CUDA graph, K=8192 N=28672, bench/results/cupy_mma_probe_h100_run14_call1.log):
# int4 M = 1 / 4 / 16 60.9 / 66.9 / 84.9 us at {1: 3, 2: 2} against 49.8 / 53.8 / 75.5, nf4 88.9 / 128.3 / 151.8
# against 77.6 / 83.0 / 106.3; 3 blocks an SM made it slower still
MMA_ASYNC = {1: 0, 2: 0, 4: 0, 8: 0}
MMA_X_BYTES = 64 * 1024  # the x tile a block stages in shared memory, at most (bounds its K range)
MMA_TABLE_BYTES = 256 * 32 * 4  # the table decode's 256 fp16x2 pairs, 32 copies (one a bank), before the x tile
# blocks per SM that split-K aims for: 1 (run 13, call 2, same layer: M=1 42.7 us against 49.4 at 4, M=4 46.7
# against 52.4, M=16 76.2 against 76.4); a larger layer needs no split-K, a smaller one still splits
MMA_WAVES = 1
# persistent blocks an SM, each looping over row blocks (0: a block per row block and split); same run: M=16 68.9 us
# at 2 against 75.6 at 0 and 80.1 at 3 (48 KB of x a block); call 4 (before the bursts): 1 block 115.1 us
MMA_BLOCKS_PER_SM = 2
INSTALL_HINT = "pip install cupy-cuda13x (or the hwlab 'gpu' extra: pip install 'hwlab[gpu]')"

_modules: dict = {}  # (source, names, device index) -> (RawModule, {name: RawKernel})
_streams: dict = {}  # torch stream pointer -> cupy ExternalStream
_device_info: dict = {}  # device index -> (SMs, max opt-in shared bytes per block, shared bytes per SM)


def _torch():
    import torch

    return torch


def _cupy():
    """The ``cupy`` module, or an ImportError that says how to install it."""
    try:
        import cupy
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ImportError(f"the CuPy kernels need CuPy for CUDA 13: {INSTALL_HINT} ({e})") from e
    return cupy


def kernel_source(name: str) -> str:
    """The CUDA C++ source text of ``kernels/cuda/<name>`` as it is compiled: :data:`PRELUDE` (the helpers every
    source shares), then the file (``#line`` keeps the compiler's line numbers the file's)."""
    return f'{(CUDA_DIR / PRELUDE).read_text()}#line 1 "{name}"\n{(CUDA_DIR / name).read_text()}'


def mixed_kernel_name(stages: int) -> str:
    return f"mixed_gemv_async<{stages}>"


def trip_kernel_name(mb: int) -> str:
    return f"trip_dp4a<{mb}>"


def _module(source: str, names: tuple, device_index: int):
    """The compiled module of ``source`` on a device and its kernels ``names`` (compiled once per device)."""
    key = (source, names, device_index)
    cached = _modules.get(key)
    if cached is None:
        cupy = _cupy()
        with cupy.cuda.Device(device_index):
            module = cupy.RawModule(code=kernel_source(source), options=NVRTC_OPTIONS, name_expressions=names)
            kernels = {name: module.get_function(name) for name in names}
        cached = _modules[key] = (module, kernels)
    return cached[1]


def _info(device_index: int):
    """(SMs, opt-in shared bytes per block, shared bytes per SM) of a device: torch's properties, else
    CuPy's attributes, else the H100/H200 values (sm_90: 227 KiB a block, 228 KiB an SM)."""
    info = _device_info.get(device_index)
    if info is None:
        props = _torch().cuda.get_device_properties(device_index)
        per_block = getattr(props, "shared_memory_per_block_optin", 0)
        per_sm = getattr(props, "shared_memory_per_multiprocessor", 0)
        if not (per_block and per_sm):
            try:
                attributes = _cupy().cuda.Device(device_index).attributes
                per_block = attributes.get("MaxSharedMemoryPerBlockOptin", 0)
                per_sm = attributes.get("MaxSharedMemoryPerMultiprocessor", 0)
            except Exception:  # pragma: no cover - depends on the CuPy version
                per_block = per_sm = 0
        info = _device_info[device_index] = (props.multi_processor_count, int(per_block or SM90_SHARED_PER_BLOCK),
                                             int(per_sm or SM90_SHARED_PER_SM))
    return info


def _stream(torch_device):
    """torch's current stream on ``torch_device`` as a CuPy stream (cached per stream)."""
    ptr = _torch().cuda.current_stream(torch_device).cuda_stream
    stream = _streams.get(ptr)
    if stream is None:
        stream = _streams[ptr] = _cupy().cuda.ExternalStream(ptr)
    return stream


def _launch(kernel, device_index: int, grid: int | tuple, block: int, args: tuple, shared: int, torch_device):
    cupy = _cupy()
    stream = _stream(torch_device)
    grid = grid if isinstance(grid, tuple) else (grid,)
    if cupy.cuda.runtime.getDevice() == device_index:
        kernel(grid, (block,), args, shared_mem=shared, stream=stream)
    else:
        with cupy.cuda.Device(device_index):
            kernel(grid, (block,), args, shared_mem=shared, stream=stream)


def _ptr(t) -> np.uint64:
    return np.uint64(t.data_ptr())


def _describe(t) -> str:
    return f"{getattr(t, 'dtype', type(t).__name__)} with shape {tuple(getattr(t, 'shape', ()))}"


def _check_cuda(what: str, t) -> None:
    if t.device.type != "cuda":
        raise ValueError(f"{what} is on {t.device}: the CuPy kernels run on a CUDA device (move it with .to('cuda'))")


# --------------------------------------------------------------------------------------------------
# mixed_2_4 GEMV


def magic_divisor(d: int) -> int:
    """``ceil(2**32 / d)``: ``(i * magic) >> 32 == i // d`` for ``0 <= i < 2**32 / d`` (the kernel's division)."""
    return -(-(1 << 32) // d)


def mixed_launch_plan(dt: DeviceTensor, stages: int = DEFAULT_STAGES, device_limits=None) -> dict:
    """Sizes, shared-memory layout and grid of :func:`mixed_gemv_cupy` for ``dt`` (pure Python).

    ``device_limits``: (SMs, opt-in shared bytes per block, shared bytes per SM); the H200's when None."""
    plan = dt.plan
    n, k = dt.shape
    gs = plan.elements_per_group
    groups = plan.padded_cols // gs
    arrays = {role: dt.arrays[name] for role, name in stream_names(dt).items()}
    widths = {role: int(a.shape[1]) if a.dim() == 2 else 0 for role, a in arrays.items()}
    n4 = widths["codes4"] * 8 // gs
    n2 = groups - n4
    q4, q2 = gs // 32, gs // 64
    p4, p2 = n4 * q4, n2 * q2
    if widths["codes4"] * 8 != n4 * gs or widths["codes2"] * 16 != n2 * gs:
        raise ValueError(f"mixed_2_4 tensor with {widths['codes4']} + {widths['codes2']} code words per row does not "
                         f"split into {groups} groups of {gs}")
    scw = groups // 4 if groups % 4 == 0 else 0  # scale codes staged by cp.async when rows are whole words
    meta_words = widths["flags"] + widths["zeros4"] + widths["zeros2"] + scw
    stage_bytes = -(-((p4 + p2) * 16 + 4 * meta_words) // 16) * 16
    table_bytes = -(-((groups * (gs + X_PAD) + 3 * groups) * 4) // 16) * 16
    sms, per_block, per_sm = device_limits or (132, SM90_SHARED_PER_BLOCK, SM90_SHARED_PER_SM)
    warps = MIXED_WARPS
    while warps > 1 and table_bytes + warps * stages * stage_bytes > per_block:
        warps //= 2
    shared = table_bytes + warps * stages * stage_bytes
    if shared > per_block:
        raise ValueError(f"mixed_gemv_cupy: K={k} needs {shared} bytes of shared memory per block (x table "
                         f"{table_bytes}, {stages} row buffers of {stage_bytes}), more than the device's {per_block}; "
                         "use hwlab.kernels.matmul")
    blocks_per_sm = max(1, min(MIXED_BLOCKS_PER_SM, per_sm // (shared + 1024)))  # 1 KiB: the per-block reserve
    grid = max(1, min(math.ceil(n / warps), sms * blocks_per_sm))
    for d, count in ((q4, p4), (q2, p2)):
        i = np.arange(max(count, 1), dtype=np.uint64)
        if not np.array_equal((i * np.uint64(magic_divisor(d))) >> np.uint64(32), i // np.uint64(d)):
            raise RuntimeError(f"internal: division magic for {d} fails below {count}")  # pragma: no cover
    value_scale = plan.value_scale("int")
    return dict(n=n, k=k, groups=groups, gs=gs, n4=n4, n2=n2, widths=widths, scw=scw, stage_bytes=stage_bytes,
                table_bytes=table_bytes, shared=shared, warps=warps, grid=grid, stages=stages,
                magic4=magic_divisor(q4), magic2=magic_divisor(q2), value_scale=value_scale)


def _check_device_tensor(dt, caller: str) -> None:
    if not isinstance(dt, DeviceTensor):
        raise TypeError(f"{caller} needs a DeviceTensor (qt.to('cuda')), got {type(dt).__name__}")


def _check_fp16_x(x, note: str = "") -> None:
    """``x`` a float16 torch tensor (``note``: what the message adds after "float16")."""
    if not isinstance(x, _torch().Tensor):
        raise TypeError(f"x must be a torch tensor, got {type(x).__name__}")
    if x.dtype != _torch().float16:
        raise ValueError(f"x must be float16{note}, got {_describe(x)}")


def _check_mixed(x, dt, out):
    """The pure-Python checks of :func:`mixed_gemv_cupy`; returns (x as [K], out or None)."""
    torch = _torch()
    _check_device_tensor(dt, "mixed_gemv_cupy")
    plan = dt.plan
    if plan.packing != "mixed" or plan.decode != "int" or plan.flip or "row_scales" not in plan.arrays:
        raise ValueError(f"mixed_gemv_cupy reads mixed_2_4 tensors, got {dt.format_name} ({plan.describe()})")
    if plan.elements_per_group % 64:
        raise ValueError(f"mixed_gemv_cupy needs group_size a multiple of 64, got {plan.elements_per_group}")
    n, k = dt.shape
    _check_fp16_x(x, " (M = 1)")
    if tuple(x.shape) not in ((k,), (1, k)):
        raise ValueError(f"x must have shape [{k}] or [1, {k}] (M = 1; K of the weights), got {tuple(x.shape)}")
    if out is not None:
        if not isinstance(out, torch.Tensor) or out.dtype != torch.float16 or tuple(out.shape) not in ((1, n), (n,)):
            raise ValueError(f"out must be a float16 tensor [1, {n}], got {_describe(out)}")
        if not out.is_contiguous():
            raise ValueError("out must be contiguous")
    _check_cuda("x", x)
    _check_cuda("the weights", dt)
    if x.device != dt.device:
        raise ValueError(f"x is on {x.device}, the weights on {dt.device}")
    if out is not None and out.device != dt.device:
        raise ValueError(f"out is on {out.device}, the weights on {dt.device}")
    return x.reshape(k).contiguous(), out


def mixed_gemv_cupy(x, dt: DeviceTensor, *, out=None, stages: int = DEFAULT_STAGES):
    """fp16 ``y [1, N] = x @ W^T`` for ``x`` fp16 ``[K]`` or ``[1, K]`` and a ``mixed_2_4`` tensor on
    the GPU, saturated at +-65504 (finite in, finite out); written into ``out`` when given."""
    x, out = _check_mixed(x, dt, out)
    if stages not in MIXED_STAGES:
        raise ValueError(f"stages must be one of {MIXED_STAGES}, got {stages}")
    torch = _torch()
    index = dt.device.index if dt.device.index is not None else torch.cuda.current_device()
    key = ("cupy_mixed", stages)
    cached = dt.launch_cache.get(key)
    if cached is None:
        kernels = _module(MIXED_SOURCE, tuple(mixed_kernel_name(s) for s in MIXED_STAGES), index)
        kernel = kernels[mixed_kernel_name(stages)]
        lp = mixed_launch_plan(dt, stages, _info(index))
        if kernel.max_dynamic_shared_size_bytes < lp["shared"]:
            kernel.max_dynamic_shared_size_bytes = lp["shared"]
        arrays = {role: dt.arrays[name] for role, name in stream_names(dt).items()}
        ptr = {role: _ptr(kernel_pointer(t, arrays["flags"])) for role, t in arrays.items()}  # flags: never empty
        w = lp["widths"]
        tail = (np.int32(lp["n"]), np.int32(lp["k"]), np.int32(lp["groups"]), np.int32(lp["gs"]), np.int32(lp["n4"]),
                np.int32(w["flags"]), np.int32(w["zeros4"]), np.int32(w["zeros2"]), np.int32(lp["scw"]),
                np.uint64(lp["magic4"]), np.uint64(lp["magic2"]), np.int32(lp["stage_bytes"]),
                np.float32(lp["value_scale"]))
        weights = (ptr["codes4"], ptr["codes2"], ptr["flags"], ptr["zeros4"], ptr["zeros2"], ptr["scales"], ptr["rows"])
        cached = dt.launch_cache[key] = (kernel, weights, tail, lp["grid"], 32 * lp["warps"], lp["shared"], index)
    kernel, weights, tail, grid, block, shared, index = cached
    n = dt.shape[0]
    if out is None:
        out = torch.empty((1, n), dtype=torch.float16, device=dt.device)
    _launch(kernel, index, grid, block, (_ptr(x), *weights, _ptr(out), *tail), shared, dt.device)
    return out


# --------------------------------------------------------------------------------------------------
# TRIP: int8 activation codes x int4 weight words, exact int32


def trip_block_rows(m: int) -> int:
    """Activation rows per pass of the TRIP kernel for M rows."""
    return next(mb for mb in TRIP_MB if mb >= min(m, TRIP_MB[-1]))


def _check_trip(x_codes, w_words, out):
    torch = _torch()
    for what, t in (("x_codes", x_codes), ("w_words", w_words)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what} must be a torch tensor, got {type(t).__name__}")
    if x_codes.dtype != torch.int8 or x_codes.dim() != 2:
        raise ValueError(f"x_codes must be a 2-D torch.int8 tensor [M, K] of activation codes, got {_describe(x_codes)}")
    if w_words.dtype != torch.int32 or w_words.dim() != 2:
        raise ValueError(f"w_words must be a 2-D torch.int32 tensor [N, K / 8] of int4 words, got {_describe(w_words)}")
    m, k = x_codes.shape
    n = w_words.shape[0]
    if not 1 <= m <= TRIP_MAX_M:
        raise ValueError(f"x_codes must have 1 to {TRIP_MAX_M} rows, got M={m}")
    if k % TRIP_K_MULTIPLE or k == 0:
        raise ValueError(f"K must be a positive multiple of {TRIP_K_MULTIPLE}, got K={k}")
    if w_words.shape[1] * 8 != k:
        raise ValueError(f"w_words has {w_words.shape[1]} words per row (K={w_words.shape[1] * 8}), x_codes K={k}")
    if n == 0:
        raise ValueError("w_words has no rows")
    if TRIP_ACC_BOUND * k >= 2**31:
        raise ValueError(f"K={k} is too large for exact int32 accumulation (K * {TRIP_ACC_BOUND} must stay below 2**31)")
    _check_out_and_devices(out, torch.int32, "torch.int32", m, n, ("x_codes", x_codes), ("w_words", w_words))
    x_codes, w_words = x_codes.contiguous(), w_words.contiguous()
    for what, t in (("x_codes", x_codes), ("w_words", w_words)):
        if t.data_ptr() % 16:
            raise ValueError(f"{what} must start at a 16-byte aligned address (the kernel reads 16-byte vectors); "
                             "pass a fresh tensor or .clone() it")
    return x_codes, w_words, out


def trip_matmul_cupy(x_codes, w_words, *, out=None):
    """Exact int32 ``[M, N]``: ``acc[m, n] = sum_k x_codes[m, k] * w[n, k]`` with ``x_codes`` int8
    ``[M, K]`` (M <= 64) and ``w_words`` int32 ``[N, K / 8]`` of two's complement int4 nibbles
    (element k at bits 4 (k % 8) of word k / 8; :func:`hwlab.kernels.trip.pack_int4_words`)."""
    x_codes, w_words, out = _check_trip(x_codes, w_words, out)
    torch = _torch()
    m, k = x_codes.shape
    n = w_words.shape[0]
    device = w_words.device
    index = device.index if device.index is not None else torch.cuda.current_device()
    kernels = _module(TRIP_SOURCE, tuple(trip_kernel_name(mb) for mb in TRIP_MB), index)
    kernel = kernels[trip_kernel_name(trip_block_rows(m))]
    sms = _info(index)[0]
    grid = max(1, min(math.ceil(n / TRIP_WARPS), sms * (2048 // (32 * TRIP_WARPS))))
    if out is None:
        out = torch.empty((m, n), dtype=torch.int32, device=device)
    _launch(kernel, index, grid, 32 * TRIP_WARPS,
            (_ptr(x_codes), _ptr(w_words), _ptr(out), np.int32(m), np.int32(n), np.int32(k)), 0, device)
    return out


# --------------------------------------------------------------------------------------------------
# int MMA: small batches on tensor cores, integer codes decoded into the A fragments


def mma_words(bits: int, group: int) -> int:
    """Words V a lane of ``int_mma`` loads per row and chunk for ``bits``-bit codes in groups of ``group``: the
    largest of :data:`MMA_WORDS` whose chunk (a quad's 4 V words, 4 V E codes) divides the group and gives an
    even number of mmas (V E / 4, two a shared-memory slot); 0 where none does."""
    e = 32 // bits
    return next((v for v in MMA_WORDS if group % (4 * v * e) == 0 and v * e % 8 == 0), 0)


def mma_fragment_k(bits: int, v: int, table: bool = False) -> np.ndarray:
    """int ``[4, V E / 2, 2]``: the chunk column (physical code ``k`` of a row's chunk of 4 V E codes) of half
    ``h`` of pair ``P`` of a lane with ``t = lane % 4`` (``kernels/cuda/int_mma.cu``'s K permutation). Pair P is
    code ``p`` and ``p + E/2`` of the lane's word ``q`` (P = q E/2 + p): ``(V t + q) E + p + h E/2``; with the
    ``table`` decode, byte ``p`` of the word: ``(V t + q) E + 2 p + h``. mma ``s`` of the chunk reads pairs 2s
    (its a0, a1 and b0: logical k ``2t + h``) and 2s + 1 (a2, a3, b1: ``2t + 8 + h``)."""
    e = 32 // bits
    t, pair, h = np.meshgrid(np.arange(4), np.arange(v * e // 2), np.arange(2), indexing="ij")
    p = pair % (e // 2)
    return (v * t + pair // (e // 2)) * e + (2 * p + h if table else p + h * (e // 2))


def mma_x_word(i: int, j: int, pair: int, lane: int, mmas: int, nj: int, rows: int = 8) -> int:
    """The 32-bit word of ``int_mma``'s staged x tile that holds pair ``pair`` (two halves, :func:`mma_fragment_k`)
    of batch row ``8 j + lane // 4`` for lane ``lane`` (< 4 ``rows``), chunk ``i`` of the block, ``mmas`` mmas a
    chunk, ``nj`` batch tiles of ``rows`` staged rows (the launch plan's ``x_rows``): slots of 16 bytes, the 4
    ``rows`` lanes that hold a staged row side by side (``x_word`` in the source)."""
    if not 0 <= lane < 4 * rows:
        raise ValueError(f"lane {lane} holds no staged row of {rows} (lanes 0..{4 * rows - 1} do)")
    return (((i * nj + j) * (mmas // 2) + pair // 4) * 4 * rows + lane) * 4 + pair % 4


def mma_decode(plan) -> str | None:
    """How ``int_mma`` decodes a plan's codes: ``"int"`` (integer codes of :data:`MMA_BITS` bits, the magic-number
    pairs), ``"table"`` (4-bit codes of one table of at most 16 entries that binary16 holds to 2**-11 of each:
    ``dispatch.table_fits_binary16``; nf4, the FP4 splits, flint4, shift4, a user's table), or None. Both read whole
    words without type ids."""
    if plan.packing != "words" or plan.member_rule != "none":
        return None
    if plan.decode == "int" and plan.bits in MMA_BITS:
        return "int"
    table = plan.bits == 4 and not plan.zero_bits and plan.lut.shape[0] == 1 and table_fits_binary16(plan)
    return "table" if table else None


def mma_unsupported(plan) -> str | None:
    """Why :func:`int_mma_cupy` cannot read a plan's tensor, or None: codes :func:`mma_decode` reads, float scales
    (fp16 or fp32) per group with nothing else folded in, zero points (if any) in code units and in whole fields of
    a word, groups of whole chunks (:func:`mma_words`)."""
    if mma_decode(plan) is None:
        return (f"it reads integer codes of {MMA_BITS} bits (int2, int4, int8 and their _asym) or 4-bit codes of one "
                f"table of at most 16 entries (nf4, the FP4 splits), in whole words, not {plan.describe()}")
    if plan.scale_kind != "float" or plan.has_row_scales or plan.double_quant_block:
        return f"it reads plain fp16 or fp32 group scales, not {plan.describe()}"
    if plan.zero_bits and (32 % plan.zero_bits or plan.decode_scale != 1.0):
        return f"it reads zero points of 1, 2, 4, 8 or 16 bits in code units, not {plan.describe()}"
    if not mma_words(plan.bits, plan.elements_per_group) or plan.padded_cols != plan.groups * plan.elements_per_group:
        return (f"groups must hold whole chunks of {4 * (32 // plan.bits)} or a multiple of "
                f"{max(4 * (32 // plan.bits), 32)} codes, got group_size {plan.elements_per_group}")
    return None


def mma_kernel_name(bits: int, flip: int, zero_bits: int, table: bool, v: int, nj: int, tiles: int, prefetch: int,
                    stages: int, scale: str) -> str:
    return (f"int_mma<{bits}, {flip}, {zero_bits}, {int(table)}, {v}, {nj}, {tiles}, {prefetch}, {stages}, "
            f"{'float' if scale == 'float32' else 'unsigned short'}>")


# int_mma's parameters, as int_mma.cu declares them ({scale}: its last template argument)
MMA_PARAMETERS = ("(const unsigned short*, const unsigned*, const {scale}*, const unsigned*, const unsigned*, "
                  "unsigned short*, float*, int*, int, int, int, int, int, int, int, int, unsigned, int, int, int, "
                  "float, float, float)")


def mma_instances(names) -> str:
    """The source nvcc compiles offline (tests, ``bench/kernel_instructions.py``) for the ``int_mma`` kernels
    ``names`` (:func:`mma_kernel_name`): :func:`kernel_source` and an explicit instantiation of each (NVRTC gets
    them by name expression instead)."""
    lines = [kernel_source(MMA_SOURCE)]
    lines += [f"template __global__ void {name}{MMA_PARAMETERS.format(scale=name.split(', ')[-1][:-1])};"
              for name in names]
    return "\n".join(lines) + "\n"


def group_magic(chunks_per_group: int, chunks: int) -> int:
    """``int_mma``'s multiply-high divisor of chunk indices: ``ceil(2^32 / chunks_per_group)``, so that
    ``(c * magic) >> 32 == c // chunks_per_group`` for every chunk ``c < chunks`` (exact while ``chunks *
    chunks_per_group < 2^32``; Granlund and Montgomery, PLDI 1994); 0 for one chunk a group (the group is the
    chunk)."""
    if chunks_per_group == 1:
        return 0
    if chunks * chunks_per_group >= 2**32:
        raise ValueError(f"int_mma_cupy: {chunks} chunks of groups of {chunks_per_group} chunks exceed the kernel's "
                         "32-bit group arithmetic")
    return -(-(2**32) // chunks_per_group)


def _by_tiles(setting, allowed) -> bool:
    """Whether a launch constant by batch tiles is ``{1: value, 2: value, 4: value, 8: value}``
    (:data:`MMA_BATCH_TILES`) with integer values in ``allowed``."""
    return (isinstance(setting, dict) and sorted(setting) == list(MMA_BATCH_TILES)
            and all(_is_int(v) and v in allowed for v in setting.values()))


def mma_row_tiles(m: int) -> int:
    """The batch tiles of 8 rows that ``m`` rows of x (1..:data:`MMA_MAX_M`) round up to: the fewest of
    :data:`MMA_BATCH_TILES` that hold them (1 up to 8 rows, 2 up to 16, 4 up to 32, 8 up to 64)."""
    if not _is_int(m) or not 1 <= m <= MMA_MAX_M:
        raise ValueError(f"int_mma takes 1..{MMA_MAX_M} rows of x, got m = {m!r}")
    return next(tiles for tiles in MMA_BATCH_TILES if 8 * tiles >= m)


def mma_batch_tiles(m: int) -> int:
    """Batch tiles of 8 rows a block of ``int_mma`` takes for ``m`` rows of x: :func:`mma_row_tiles`, at most
    :data:`MMA_M_BLOCK_TILES` (more rows: M-blocks of that many tiles, :func:`mma_m_blocks`)."""
    if MMA_M_BLOCK_TILES not in MMA_BATCH_TILES or not _is_int(MMA_M_BLOCK_TILES):
        raise ValueError(f"int_mma: MMA_M_BLOCK_TILES must be one of {MMA_BATCH_TILES}, got {MMA_M_BLOCK_TILES!r}")
    return min(mma_row_tiles(m), MMA_M_BLOCK_TILES)


def mma_m_blocks(m: int) -> int:
    """M-blocks (the grid's y) of ``int_mma`` for ``m`` rows of x: blocks of :func:`mma_batch_tiles` tiles of 8."""
    return math.ceil(m / (8 * mma_batch_tiles(m)))


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def mma_launch_plan(plan, m: int, scale_dtype: str = "float16", sms: int = 132) -> dict:
    """Name, grid (x, M-blocks), block, shared bytes and sizes of :func:`int_mma_cupy` for ``m`` batch rows of a
    plan (pure Python; the tile constants as they are now). Split-K: the fewest splits that keep a block's x tile
    within :data:`MMA_X_BYTES` and give about :data:`MMA_WAVES` blocks per SM; then :data:`MMA_BLOCKS_PER_SM` blocks
    an SM over all M-blocks, each looping over row blocks (``blocks_per_split`` a split and M-block)."""
    reason = mma_unsupported(plan)
    if reason:
        raise ValueError(f"int_mma_cupy: {reason}")
    if (not _is_int(MMA_WARPS) or not 1 <= MMA_WARPS <= MMA_WARPS_MAX or not _is_int(MMA_TILES) or MMA_TILES < 1
            or not _by_tiles(MMA_PREFETCH, range(1, 2**10))):
        raise ValueError(f"int_mma_cupy: MMA_WARPS must be 1..{MMA_WARPS_MAX}, MMA_TILES >= 1 and MMA_PREFETCH "
                         f"{{1: chunks, 2: chunks, 4: chunks, 8: chunks}} (each >= 1), got {MMA_WARPS}, {MMA_TILES}, "
                         f"{MMA_PREFETCH}")
    if not _by_tiles(MMA_ASYNC, (0, 2, 3, 4)):
        raise ValueError(f"int_mma_cupy: MMA_ASYNC must be {{1: stages, 2: stages, 4: stages, 8: stages}} with 0 "
                         f"(none) or 2 to 4 stages (more spill), got {MMA_ASYNC}")
    n = plan.shape[0]
    e = 32 // plan.bits
    table = mma_decode(plan) == "table"
    v = mma_words(plan.bits, plan.elements_per_group)
    nj = mma_batch_tiles(m)
    m_blocks = mma_m_blocks(m)
    x_rows = min(m, 8)  # batch rows staged a tile (two or more tiles: 8 each)
    ck = 4 * v * e  # codes a chunk
    chunks = plan.padded_cols // ck
    chunk_bytes = nj * x_rows * ck * 2
    rows = 16 * MMA_TILES * MMA_WARPS
    row_blocks = math.ceil(n / rows)
    fewest = math.ceil(chunks / max(1, MMA_X_BYTES // chunk_bytes))
    splits = min(chunks, max(fewest, math.ceil(MMA_WAVES * sms / row_blocks)))
    per_block = math.ceil(chunks / splits)
    splits = math.ceil(chunks / per_block)  # every block has chunks
    resident = math.ceil(MMA_BLOCKS_PER_SM * sms / (splits * m_blocks)) if MMA_BLOCKS_PER_SM > 0 else row_blocks
    blocks_per_split = min(row_blocks, max(1, resident))
    depth = min(MMA_PREFETCH[nj], MMA_ZERO_POINT_PREFETCH) if plan.zero_bits else MMA_PREFETCH[nj]
    stages = MMA_ASYNC[nj]
    ring_bytes = MMA_WARPS * stages * MMA_TILES * 256 * v  # a warp's A x MT x 2 rows x 32 lanes x V words
    shared = per_block * chunk_bytes + ring_bytes + (MMA_TABLE_BYTES if table else 0)
    if shared > SM90_SHARED_PER_BLOCK:
        raise ValueError(f"int_mma_cupy: {shared} bytes of shared memory a block for {m} rows (x tile, cp.async rings "
                         f"of MMA_ASYNC[{nj}] = {stages} stages of MMA_TILES = {MMA_TILES} tiles, table) is over the "
                         f"{SM90_SHARED_PER_BLOCK} a Hopper block can have: lower MMA_X_BYTES, MMA_ASYNC or MMA_TILES")
    return dict(name=mma_kernel_name(plan.bits, 0 if table else plan.flip, plan.zero_bits, table, v, nj, MMA_TILES,
                                     depth, stages, scale_dtype),
                decode="table" if table else "int", prefetch=depth, stages=stages, v=v, nj=nj, m_blocks=m_blocks,
                x_rows=x_rows,
                chunks=chunks,
                chunks_per_block=per_block,
                chunks_per_group=plan.elements_per_group // ck,
                group_magic=group_magic(plan.elements_per_group // ck, chunks),
                rows=rows, codes_per_chunk=ck, splits=splits, row_blocks=row_blocks, blocks_per_split=blocks_per_split,
                grid=(blocks_per_split * splits, m_blocks), block=32 * MMA_WARPS,
                shared=shared)


def _check_out_and_devices(out, dtype, dtype_name: str, m: int, n: int, first: tuple, second: tuple) -> None:
    """``out`` (if given) a contiguous ``dtype`` tensor ``[m, n]``; both named inputs (``(name, tensor)``) and
    ``out`` on one CUDA device."""
    if out is not None:
        if not isinstance(out, _torch().Tensor) or out.dtype != dtype or tuple(out.shape) != (m, n):
            raise ValueError(f"out must be a {dtype_name} tensor [{m}, {n}], got {_describe(out)}")
        if not out.is_contiguous():
            raise ValueError("out must be contiguous")
    (a_name, a), (b_name, b) = first, second
    _check_cuda(a_name, a)
    _check_cuda(b_name, b)
    if a.device != b.device or (out is not None and out.device != b.device):
        raise ValueError(f"{a_name} is on {a.device}, {b_name} on {b.device}"
                         + (f", out on {out.device}" if out is not None else "") + ": they must share one device")


def _check_mma(x, dt, out):
    """The pure-Python checks of :func:`int_mma_cupy`; returns (x as [M, K], out or None)."""
    torch = _torch()
    _check_device_tensor(dt, "int_mma_cupy")
    reason = mma_unsupported(dt.plan)
    if reason:
        raise ValueError(f"int_mma_cupy: {reason}")
    scales = dt.arrays[dt.plan.arrays["scales"]]
    if scales.dtype not in (torch.float16, torch.float32):
        raise ValueError(f"int_mma_cupy reads fp16 or fp32 scales, got {scales.dtype}")
    n, k = dt.shape
    _check_fp16_x(x)
    if x.dim() not in (1, 2) or x.shape[-1] != k or not 1 <= (x.shape[0] if x.dim() == 2 else 1) <= MMA_MAX_M:
        raise ValueError(f"x must have shape [M, {k}] with M in 1..{MMA_MAX_M} (or [{k}]; K of the weights), "
                         f"got {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError("x must be contiguous")
    m = x.shape[0] if x.dim() == 2 else 1
    _check_out_and_devices(out, torch.float16, "float16", m, n, ("x", x), ("the weights", dt))
    if dt.arrays[dt.plan.arrays["codes"]].data_ptr() % 16:
        raise ValueError("the code words must start at a 16-byte aligned address (the kernel reads 16-byte vectors)")
    return x.reshape(m, k), out


def int_mma_cupy(x, dt: DeviceTensor, *, out=None):
    """fp16 ``y [M, N] = x @ W^T`` for ``x`` fp16 ``[M, K]`` (M <= :data:`MMA_MAX_M`) or ``[K]`` and integer or table
    codes in whole words on the GPU (:func:`mma_unsupported` says which), accumulated in fp32 on tensor cores, the
    scale applied per chunk of a group, saturated at +-65504 (``dispatch.OUT_MAX``); written into ``out`` when given."""
    x, out = _check_mma(x, dt, out)
    if out is None:
        out = _torch().empty((x.shape[0], dt.shape[0]), dtype=_torch().float16, device=dt.device)
    int_mma_launcher(dt, x.shape[0])(x, out)
    return out


def int_mma_launcher(dt: DeviceTensor, m: int):
    """``launch(x2, out2)``: :func:`int_mma_cupy` for ``m`` rows of ``dt`` without its checks (``x2`` fp16
    ``[m, K]`` and ``out2`` fp16 ``[m, N]``, contiguous, on ``dt``'s device: ``dispatch.matmul`` checked them),
    built once per tensor, row count class and tile constants (the kernel compiled once per device)."""
    torch = _torch()
    mma_batch_tiles(m)  # MMA_M_BLOCK_TILES checked before it is part of a key (True and 4.0 hash as 1 and 4)
    key = ("cupy_mma", m, MMA_WORDS, MMA_BITS, MMA_WARPS, MMA_TILES, tuple(MMA_PREFETCH.items()),
           tuple(MMA_ASYNC.items()), MMA_X_BYTES, MMA_WAVES, MMA_BLOCKS_PER_SM, MMA_M_BLOCK_TILES,
           MMA_ZERO_POINT_PREFETCH)
    launch = dt.launch_cache.get(key)
    if launch is not None:
        return launch
    n, plan = dt.shape[0], dt.plan
    index = dt.device.index if dt.device.index is not None else torch.cuda.current_device()
    scales = dt.arrays[plan.arrays["scales"]]
    lp = mma_launch_plan(plan, m, str(scales.dtype).removeprefix("torch."), _info(index)[0])
    kernel = _module(MMA_SOURCE, (lp["name"],), index)[lp["name"]]
    if kernel.max_dynamic_shared_size_bytes < lp["shared"]:
        kernel.max_dynamic_shared_size_bytes = lp["shared"]
    codes = dt.arrays[plan.arrays["codes"]]
    zeros = dt.arrays[plan.arrays["zeros"]] if plan.zero_bits else codes  # a pointer is never to nothing
    table = dt.tables["pairs_float16"] if lp["decode"] == "table" else codes  # entries 2j, 2j + 1 in word j
    scale_unit, value_scale = split_value_scale(plan.value_scale("lut" if lp["decode"] == "table" else "int"))
    weights = (_ptr(codes), _ptr(scales), _ptr(zeros), _ptr(table))
    sizes = (np.int32(m), np.int32(n), np.int32(dt.shape[1]), np.int32(plan.row_words),
             np.int32(plan.groups if plan.scale_rows > 1 else 0), np.int32(zeros.shape[1] if plan.zero_bits else 0),
             np.int32(lp["chunks"]), np.int32(lp["chunks_per_block"]), np.uint32(lp["group_magic"]),
             np.int32(lp["splits"]), np.int32(lp["row_blocks"]), np.int32(lp["x_rows"]), np.float32(scale_unit),
             np.float32(value_scale), np.float32(OUT_MAX["float16"]))
    grid, block, shared, split = lp["grid"], lp["block"], lp["shared"], lp["splits"] > 1
    counts = lp["row_blocks"] * lp["m_blocks"]  # a count per row block of each M-block

    def launch(x2, out2) -> None:
        work, count = split_workspace(dt.device, m * n, counts) if split else (out2, out2)
        _launch(kernel, index, grid, block, (_ptr(x2), *weights, _ptr(out2), _ptr(work), _ptr(count), *sizes),
                shared, dt.device)

    dt.launch_cache[key] = launch
    return launch
