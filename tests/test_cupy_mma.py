"""The small-batch integer MMA kernel: kernels/cuda/int_mma.cu and hwlab.kernels.cupy_kernels.int_mma_cupy.

* Always (where nvcc exists): the source compiles for sm_90 without spills, with HMMA and LOP3 in its SASS.
* Always (CPU): the argument checks raise before CuPy is touched; the launch plan; a numpy emulation of what
  every lane loads, decodes (half_pairs.int_pair_constants) and feeds to mma.sync m16n8k16 (the PTX ISA's
  fragment layout) from the x tile staged as stage_x stages it, reproducing ``x @ W^T`` in float64.
* ``gpu``-marked (skipped with the reason without CUDA or CuPy): against the float64 reference with
  ``kernels.testing.worst_error`` (the Triton tile_dot's bound), odd M and N, outputs poisoned first.
"""
import re
import shutil
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

import hwlab.formats as F  # noqa: E402
from hwlab.kernels import cupy_kernels as ck  # noqa: E402
from hwlab.kernels.device import pair_table  # noqa: E402
from hwlab.kernels.half_pairs import int_pair_constants  # noqa: E402
from hwlab.kernels.plan import build_plan  # noqa: E402
from hwlab.kernels.testing import cupy_gpu_missing  # noqa: E402

NVCC = shutil.which("nvcc")
COMPILED = [(4, 8, 0, False, 4, 1, 1, 2, 0, "float16"), (4, 8, 0, False, 4, 2, 1, 4, 0, "float16"),
            (4, 0, 4, False, 4, 1, 1, 4, 0, "float16"), (8, 128, 0, False, 4, 2, 2, 2, 0, "float32"),
            (2, 2, 0, False, 2, 2, 1, 4, 0, "float16"), (4, 0, 0, True, 4, 1, 1, 2, 0, "float16"),
            (4, 0, 0, True, 4, 2, 1, 3, 0, "float32"), (4, 0, 0, True, 1, 2, 1, 3, 0, "float16"),
            (4, 8, 0, False, 4, 1, 1, 2, 4, "float16"), (4, 0, 4, False, 4, 2, 1, 2, 3, "float16"),
            (4, 0, 0, True, 4, 2, 1, 2, 4, "float32"), (2, 2, 0, False, 2, 1, 2, 2, 2, "float16"),
            (4, 8, 0, False, 1, 2, 1, 2, 2, "float16"), (4, 8, 0, False, 2, 2, 1, 2, 3, "float16"),
            (4, 8, 0, False, 4, 4, 1, 1, 0, "float16"), (4, 0, 0, True, 4, 8, 1, 1, 0, "float16"),
            (8, 128, 0, False, 4, 8, 1, 1, 0, "float32")]  # (int4_asym at four tiles spills 8 bytes: cupy_kernels)


def _quantize(fmt, n, k, gs=128, seed=0):
    w = (np.random.default_rng(seed).standard_normal((n, k)) * 0.02).astype(np.float32)
    return F.quantize(w, fmt, group_size=gs, pad=k % gs != 0)


# ------------------------------------------------------------------------------------------------
# compile (CPU, nvcc)

def _compile(names, tmp_path):
    """nvcc -Xptxas -v of the kernels ``names`` for sm_90: the cubin's path and ptxas' report."""
    wrapper = tmp_path / "instances.cu"
    wrapper.write_text(ck.mma_instances(names))  # the text NVRTC compiles (the prelude, then the file), instantiated
    cubin = tmp_path / "int_mma.cubin"
    done = subprocess.run([NVCC, "-arch=sm_90", "-std=c++17", "-cubin", "-Xptxas", "-v", "-o", str(cubin),
                           str(wrapper)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return cubin, done.stderr + done.stdout


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
def test_int_mma_compiles_without_spills(tmp_path):
    names = [ck.mma_kernel_name(*c) for c in COMPILED]
    cubin, report = _compile(names, tmp_path)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert len(spills) == len(names) and all(s == ("0", "0") for s in spills), report
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump:
        sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True).stdout
        for op in ("HMMA.16816.F32", "LOP3", "LDS.128"):
            assert op in sass, f"no {op} in the SASS"
        assert "LDL" not in sass and "STL" not in sass, "local memory in the SASS"


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
def test_every_shipped_int_mma_kernel_fits_its_blocks_an_sm(tmp_path):
    """The kernels mma_launch_plan names at K=8192 N=28672 (one and two batch tiles) keep MMA_BLOCKS_PER_SM blocks
    of MMA_WARPS warps an SM by registers (65536 a Hopper SM) and spill nothing."""
    names = set()
    for fmt in ("int4", "int4_asym", "int2", "int2_asym", "int8", "int8_asym", "ternary", "nf4", "fp4_e2m1"):
        qt = _quantize(fmt, 16, 8192)
        plan = build_plan(qt)
        plan = type(plan)(**dict(plan.__dict__, shape=(28672, 8192)))
        names |= {ck.mma_launch_plan(plan, m, qt.layout[plan.arrays["scales"]].dtype)["name"] for m in (4, 16)}
    _, report = _compile(sorted(names), tmp_path)
    used = [int(r) for r in re.findall(r"Used (\d+) registers", report)]
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    budget = 65536 // (ck.MMA_BLOCKS_PER_SM * 32 * ck.MMA_WARPS)
    assert len(used) == len(names) and max(used) <= budget and all(s == ("0", "0") for s in spills), report


def test_int_mma_source_has_no_includes():
    assert "#include" not in ck.kernel_source(ck.MMA_SOURCE)  # NVRTC without headers


# ------------------------------------------------------------------------------------------------
# argument checks (CPU tensors: the errors come before CuPy is touched)

def test_int_mma_argument_errors_on_cpu():
    dt = _quantize("int4", 8, 256).to("cpu")
    x = torch.zeros(3, 256, dtype=torch.float16)
    with pytest.raises(TypeError, match="DeviceTensor"):
        ck.int_mma_cupy(x, dt.source)
    with pytest.raises(ValueError, match="integer codes"):
        ck.int_mma_cupy(x, _quantize("bitmod_fp4", 8, 256).to("cpu"))  # type ids: more than one table
    with pytest.raises(ValueError, match="integer codes"):
        ck.int_mma_cupy(x, _quantize("int3", 8, 256).to("cpu"))
    with pytest.raises(ValueError, match="group_size 16"):
        ck.int_mma_cupy(x, _quantize("int4", 8, 256, gs=16).to("cpu"))
    with pytest.raises(TypeError, match="torch tensor"):
        ck.int_mma_cupy(np.zeros((3, 256), np.float16), dt)
    with pytest.raises(ValueError, match="float16"):
        ck.int_mma_cupy(x.bfloat16(), dt)
    with pytest.raises(ValueError, match=r"M in 1..64"):
        ck.int_mma_cupy(torch.zeros(65, 256, dtype=torch.float16), dt)
    with pytest.raises(ValueError, match=r"\[M, 256\]"):
        ck.int_mma_cupy(torch.zeros(3, 255, dtype=torch.float16), dt)
    with pytest.raises(ValueError, match="contiguous"):
        ck.int_mma_cupy(torch.zeros(256, 3, dtype=torch.float16).T, dt)
    with pytest.raises(ValueError, match=r"out must be a float16 tensor \[3, 8\]"):
        ck.int_mma_cupy(x, dt, out=torch.zeros(3, 8))
    with pytest.raises(ValueError, match="CUDA device"):
        ck.int_mma_cupy(x, dt)
    with pytest.raises(ValueError, match="CUDA device"):
        ck.int_mma_cupy(x[0], dt)


@pytest.mark.parametrize("fmt", ["nf4", "fp4_e2m1", "flint4", "shift4", "fp4_er_pos"])
def test_mma_launch_plan_of_table_codes(fmt):
    plan = build_plan(_quantize(fmt, 8, 8192))
    plan = type(plan)(**dict(plan.__dict__, shape=(28672, 8192)))
    assert ck.mma_decode(plan) == "table" and plan.lut.shape == (1, 16)
    for m, nj in ((1, 1), (16, 2), (32, 4), (64, 4)):
        lp = ck.mma_launch_plan(plan, m)
        assert lp["decode"] == "table" and lp["name"].startswith(f"int_mma<4, 0, 0, 1, 4, {nj}, ")
        assert lp["grid"][1] == lp["m_blocks"] == (2 if m == 64 else 1)
        assert lp["shared"] == lp["chunks_per_block"] * nj * min(m, 8) * 128 * 2 + ck.MMA_TABLE_BYTES


def test_the_launch_cache_key_holds_every_constant_the_launch_plan_reads():
    """A launch built under other tile constants is never reused (a probe's variants time what they say)."""
    import inspect
    import re

    read = set()
    for function in (ck.mma_launch_plan, ck.mma_batch_tiles, ck.mma_row_tiles, ck.mma_m_blocks, ck.mma_words,
                     ck.mma_unsupported, ck.mma_decode):
        read |= set(re.findall(r"\bMMA_[A-Z_]+\b", inspect.getsource(function)))
    launcher = inspect.getsource(ck.int_mma_launcher)
    key = launcher[launcher.index("key = ("):launcher.index("launch = dt.launch_cache.get(key)")]
    fixed = {"MMA_BATCH_TILES", "MMA_WARPS_MAX", "MMA_TABLE_BYTES", "MMA_MAX_M"}  # not launch constants
    assert read - fixed and read - fixed <= set(re.findall(r"\bMMA_[A-Z_]+\b", key))


def test_a_user_table_and_minifloat_need_no_kernel_code():
    lut = F.define_lut("mma_user_apot4", [0, 0.25, 0.5, 1, 1.5, 2, 3, 4, -0.25, -0.5, -1, -1.5, -2, -3, -4],
                       register=False)
    mini = F.define_minifloat("mma_user_e2m1b0", 2, 1, bias=0, register=False)
    w = (np.random.default_rng(3).standard_normal((8, 256)) * 0.02).astype(np.float32)
    for fmt in (lut, mini):
        plan = build_plan(F.quantize(w, fmt))
        assert ck.mma_decode(plan) == "table" and ck.mma_unsupported(plan) is None, plan.describe()
    tiny = F.define_lut("mma_user_tiny", [0, 1e-9, 1, 2], bits=4, register=False)  # 1e-9: below fp16's normals
    assert ck.mma_decode(build_plan(F.quantize(w, tiny))) is None


def test_matmul_takes_table_codes_through_int_mma():
    from hwlab.kernels import dispatch

    assert "table" in dispatch.CUPY_MMA_DECODES


def test_every_decode_and_batch_tile_count_has_a_smallest_layer(monkeypatch):
    from hwlab.kernels import dispatch

    tiles = [ck.mma_row_tiles(m) for m in range(1, ck.MMA_MAX_M + 1)]
    assert sorted(set(tiles)) == list(ck.MMA_BATCH_TILES) and [tiles[m - 1] for m in (8, 9, 16, 17, 32, 33)] == [
        1, 2, 2, 4, 4, 8]
    assert [ck.mma_batch_tiles(m) for m in (8, 9, 16, 17, 32, 33, 64)] == [1, 2, 2, 4, 4, 4, 4]  # M-blocks of 4
    monkeypatch.setattr(ck, "MMA_M_BLOCK_TILES", 3)
    with pytest.raises(ValueError, match=r"MMA_M_BLOCK_TILES must be one of \(1, 2, 4, 8\), got 3"):
        ck.mma_batch_tiles(40)
    monkeypatch.undo()
    assert set(dispatch.CUPY_MMA_MIN_WEIGHTS) == {(d, t) for d in dispatch.CUPY_MMA_DECODES for t in ck.MMA_BATCH_TILES}
    monkeypatch.setattr(dispatch, "CUPY_MMA_MIN_WEIGHTS", {("int", 1): 0})  # a user's table without two tiles
    with pytest.raises(ValueError, match=r"CUPY_MMA_MIN_WEIGHTS must be a dict .* an entry for \('int', 2\)"):
        dispatch._smallest_layer("int", 2)
    for bad in ("2**24", None, float("nan"), -1, True):  # a value a user typed: an error naming the entry
        monkeypatch.setattr(dispatch, "CUPY_MMA_MIN_WEIGHTS", {("int", 1): bad})
        with pytest.raises(ValueError, match=r"CUPY_MMA_MIN_WEIGHTS\[\('int', 1\)\] must be a number of weights"):
            dispatch._smallest_layer("int", 1)
    monkeypatch.setattr(dispatch, "CUPY_MMA_MIN_WEIGHTS", 0)  # the scalar of before run 14
    with pytest.raises(ValueError, match="CUPY_MMA_MIN_WEIGHTS must be a dict"):
        dispatch._smallest_layer("int", 1)


@pytest.mark.parametrize("m", [0, -1, 65, 8.5, True, "4", None])
def test_int_mma_refuses_row_counts_it_has_no_tiles_for(m):
    plan = build_plan(_quantize("int4", 8, 256))
    with pytest.raises(ValueError, match=f"int_mma takes 1..64 rows of x, got m = {re.escape(repr(m))}"):
        ck.mma_launch_plan(plan, m)


def test_int_mma_refuses_tiles_past_a_blocks_shared_memory(monkeypatch):
    plan = build_plan(_quantize("int4", 8, 8192))
    plan = type(plan)(**dict(plan.__dict__, shape=(28672, 8192)))
    monkeypatch.setattr(ck, "MMA_TILES", 8)
    monkeypatch.setattr(ck, "MMA_ASYNC", dict.fromkeys(ck.MMA_BATCH_TILES, 4))
    with pytest.raises(ValueError, match=r"327680 bytes of shared memory a block for 64 rows .* over the 232448"):
        ck.mma_launch_plan(plan, 64)
    for name, bad in (("MMA_TILES", 2.5), ("MMA_TILES", True), ("MMA_WARPS", 8.0)):
        monkeypatch.setattr(ck, "MMA_ASYNC", dict.fromkeys(ck.MMA_BATCH_TILES, 0))
        monkeypatch.setattr(ck, "MMA_TILES", 1)
        monkeypatch.setattr(ck, name, bad)
        with pytest.raises(ValueError, match="MMA_WARPS must be 1..8, MMA_TILES >= 1"):
            ck.mma_launch_plan(plan, 4)
        monkeypatch.undo()


def test_int_mma_refuses_other_scales():
    for fmt in ("mxint8",):
        with pytest.raises(ValueError, match="int_mma_cupy"):
            ck.mma_launch_plan(build_plan(_quantize(fmt, 8, 256, gs=32)), 4)


# ------------------------------------------------------------------------------------------------
# launch plan (pure Python)

@pytest.mark.parametrize("fmt,gs,v", [("int4", 128, 4), ("int4", 64, 2), ("int4", 32, 1), ("int8", 128, 4),
                                      ("int8", 32, 2), ("int2", 128, 2), ("int2", 64, 1), ("int4_asym", 128, 4)])
def test_mma_words(fmt, gs, v):
    plan = build_plan(_quantize(fmt, 4, 256, gs=gs))
    assert ck.mma_words(plan.bits, gs) == v and ck.mma_unsupported(plan) is None


def test_mma_launch_plan_of_cp_async_stages(monkeypatch):
    from hwlab.kernels import dispatch

    plan = build_plan(_quantize("int4", 8, 8192))
    plan = type(plan)(**dict(plan.__dict__, shape=(28672, 8192)))
    monkeypatch.setattr(ck, "MMA_ASYNC", {1: 4, 2: 3, 4: 2, 8: 2})
    monkeypatch.setattr(ck, "MMA_M_BLOCK_TILES", 8)  # one block of eight tiles for 64 rows
    for m, nj, stages in ((1, 1, 4), (16, 2, 3), (17, 4, 2), (64, 8, 2)):
        lp = ck.mma_launch_plan(plan, m)
        ring = ck.MMA_WARPS * stages * ck.MMA_TILES * 256 * 4  # A x MT x 2 rows x 32 lanes x V words a warp
        assert lp["stages"] == stages and lp["name"].endswith(f", {stages}, unsigned short>")
        assert lp["shared"] == lp["chunks_per_block"] * nj * min(m, 8) * 128 * 2 + ring
        assert dispatch.mma_launch(lp, ck.MMA_WARPS).stages == stages
    off = dict.fromkeys(ck.MMA_BATCH_TILES, 0)
    monkeypatch.setattr(ck, "MMA_ASYNC", off)  # register bursts: D in flight and the one decoded
    assert dispatch.mma_launch(ck.mma_launch_plan(plan, 1), ck.MMA_WARPS).stages == ck.MMA_PREFETCH[1] + 1
    for bad in ({**off, 1: 1}, {**off, 8: 5}, {1: 2}, {1: 0, 2: 0}, 4, {**off, 1: "4"}):
        monkeypatch.setattr(ck, "MMA_ASYNC", bad)
        with pytest.raises(ValueError, match="MMA_ASYNC must be"):
            ck.mma_launch_plan(plan, 4)
    monkeypatch.setattr(ck, "MMA_ASYNC", off)
    shipped = ck.MMA_PREFETCH
    # an integer as before run 13, the two tiles of run 13, a zero, a float, a list
    for bad in (4, {1: 2, 2: 3}, {**shipped, 4: 0}, {**shipped, 1: 2.0}, [2, 3]):
        monkeypatch.setattr(ck, "MMA_PREFETCH", bad)
        with pytest.raises(ValueError, match="MMA_PREFETCH"):
            ck.mma_launch_plan(plan, 4)


def _ring_schedule(stages: int, chunks: int, row_blocks: int) -> None:
    """int_mma.cu's cp.async ring (A = ``stages``) replayed for one lane over ``row_blocks`` row blocks of ``chunks``
    chunks: the prologue, then for chunk i the issue of chunk i + A - 1 into slot (i - 1) % A, commit, wait_group
    A - 1, read slot i % A. A copy lands at any moment between its commit and the wait that covers it, so a read
    must find its chunk landed and no copy pending into its slot."""
    slots, pending = [None] * stages, []  # pending: (slot, what) of each committed group, oldest first

    def issue(rb, i, slot):
        pending.append((slot, (rb, i)) if i < chunks else None)  # past the range: an empty group, no copy

    def wait(newest):
        while len(pending) > newest:
            group = pending.pop(0)
            if group:
                slots[group[0]] = group[1]

    for rb in range(row_blocks):
        for slot in range(stages - 1):  # prologue
            issue(rb, slot, slot)
        for base in range(0, chunks, stages):
            for a in range(stages):
                i = base + a
                issue(rb, i + stages - 1, (a + stages - 1) % stages)
                wait(stages - 1)
                if i < chunks:
                    assert slots[a] == (rb, i), (stages, chunks, rb, i, slots)
                    assert all(g is None or g[0] != a for g in pending), "a copy pending into the slot being read"


@pytest.mark.parametrize("stages", [2, 3, 4])
def test_cp_async_ring_reads_each_chunk_after_it_lands(stages):
    for chunks in (1, 2, 3, 4, 5, 7, 8, 64):
        _ring_schedule(stages, chunks, row_blocks=3)


def test_group_magic_divides_every_chunk_index_exactly():
    for per_group in (1, 2, 3, 5, 7, 48, 255, 4096):
        chunks = 2**32 // per_group - 1 if per_group > 1 else 2**20
        magic = ck.group_magic(per_group, chunks)
        c = np.concatenate([np.arange(5000), np.arange(chunks - 5000, chunks)]).astype(np.uint64)
        got = (c * np.uint64(magic)) >> np.uint64(32) if magic else c
        np.testing.assert_array_equal(got, c // np.uint64(per_group))
    with pytest.raises(ValueError, match="exceed the kernel's 32-bit group arithmetic"):
        ck.group_magic(3, 2**31)


@pytest.mark.parametrize("block_tiles", [4, 8])
@pytest.mark.parametrize("m", [1, 8, 9, 16, 17, 32, 33, 64])
def test_mma_launch_plan_large_layer(m, block_tiles, monkeypatch):
    monkeypatch.setattr(ck, "MMA_M_BLOCK_TILES", block_tiles)  # 4 (shipped): two M-blocks for 33..64 rows
    plan = build_plan(_quantize("int4", 8, 8192))
    plan = type(plan)(**dict(plan.__dict__, shape=(28672, 8192)))
    lp = ck.mma_launch_plan(plan, m)
    tiles = {1: 1, 8: 1, 9: 2, 16: 2, 17: 4, 32: 4, 33: 8, 64: 8}[m]
    assert lp["nj"] == ck.mma_batch_tiles(m) == min(tiles, block_tiles) and lp["v"] == 4 and lp["chunks"] == 64
    assert lp["m_blocks"] == ck.mma_m_blocks(m) == tiles // lp["nj"] == lp["grid"][1]
    assert lp["x_rows"] == min(m, 8) and lp["group_magic"] == 0  # one chunk (128 codes) a group
    assert lp["shared"] <= ck.MMA_X_BYTES and lp["shared"] == lp["chunks_per_block"] * lp["nj"] * lp["x_rows"] * 128 * 2
    assert (lp["splits"] - 1) * lp["chunks_per_block"] < lp["chunks"] <= lp["splits"] * lp["chunks_per_block"]
    assert lp["row_blocks"] * lp["splits"] >= ck.MMA_WAVES * 132  # the work, in row blocks and splits
    # persistent blocks, over all M-blocks
    resident = min(lp["row_blocks"], -(-ck.MMA_BLOCKS_PER_SM * 132 // (lp["splits"] * lp["m_blocks"])))
    assert lp["grid"][0] == lp["blocks_per_split"] * lp["splits"] == resident * lp["splits"]
    assert (lp["splits"], lp["grid"], lp["shared"]) == {1: (1, (224, 1), 16384), 8: (2, (264, 1), 65536),
                                                        9: (4, (264, 1), 65536), 16: (4, (264, 1), 65536),
                                                        17: (8, (264, 1), 65536), 32: (8, (264, 1), 65536),
                                                        33: (16, (272, 1), 65536) if block_tiles == 8 else
                                                        (8, (136, 2), 65536),
                                                        64: (16, (272, 1), 65536) if block_tiles == 8 else
                                                        (8, (136, 2), 65536)}[m]
    prefetch = ck.MMA_PREFETCH[lp["nj"]]
    assert lp["decode"] == "int"
    assert lp["name"] == f"int_mma<4, 8, 0, 0, 4, {lp['nj']}, 1, {prefetch}, 0, unsigned short>"


# ------------------------------------------------------------------------------------------------
# the fragments, emulated (CPU)

def _pair_values(word: int, p: int, bits: int, flip: int, zero: int) -> tuple[float, float]:
    """int_mma.cu's int_pair in numpy: the two halves, decoded with fp16 arithmetic (exact: checked)."""
    shifted, fields, magic, scale, offset = int_pair_constants(p, bits, flip)
    src = word >> ((10 // bits) * bits) if shifted else word
    h = (src & fields) ^ magic
    halves = np.array([h & 0xFFFF, h >> 16], np.uint16).view(np.float16)
    out = halves.astype(np.float64) * scale + (offset - zero)
    assert np.array_equal(out.astype(np.float16).astype(np.float64), out)  # HFMA2's result is exact
    return float(out[0]), float(out[1])


def _expanded_table(values: np.ndarray) -> np.ndarray:
    """int_mma.cu's expand_table in numpy: uint32 [256 * 32] from the binary16 pair words of ``values`` (16)."""
    words = pair_table(values[None].astype(np.float32), "float16")[0].view(np.uint32)
    i = np.arange(256 * 32)
    lo, hi = (i >> 5) & 15, i >> 9
    half = lambda c: (words[c >> 1] >> (16 * (c & 1))) & 0xFFFF  # noqa: E731
    return (half(lo) | (half(hi) << 16)).astype(np.uint32)


def _table_pair_values(word: int, p: int, expanded: np.ndarray, lane: int) -> tuple[float, float]:
    """int_mma.cu's table_pair: byte p of ``word`` read from lane ``lane``'s copy of the expanded table."""
    pair = int(expanded[(((word >> (8 * p)) & 0xFF) << 5) + lane])
    halves = np.array([pair & 0xFFFF, pair >> 16], np.uint16).view(np.float16)
    return float(halves[0]), float(halves[1])


def _stage_x(x: np.ndarray, bits: int, v: int, nj: int, rows: int, table: bool = False) -> np.ndarray:
    """stage_x in numpy for one chunk, ``rows`` batch rows a tile: float64 [words, 2] (the two halves of each
    word), its item order."""
    e = 32 // bits
    half, mmas, lanes = e // 2, v * e // 4, 4 * rows
    tile = np.full((nj * (mmas // 2) * lanes * 4, 2), np.nan)
    for item in range(nj * v * lanes):
        lane, q, j = item % lanes, item // lanes % v, item // lanes // v % nj
        g, t = lane >> 2, lane & 3
        h = x[8 * j + g, (v * t + q) * e:(v * t + q + 1) * e]
        for p in range(half):
            word = ck.mma_x_word(0, j, q * half + p, lane, mmas, nj, rows)
            assert np.isnan(tile[word]).all(), "a word staged twice"
            tile[word] = (h[2 * p], h[2 * p + 1]) if table else (h[p], h[p + half])
    assert not np.isnan(tile).any(), "a word never staged"
    return tile


@pytest.mark.parametrize("bits,flip,zero_bits,v,m,table", [
    (4, 8, 0, 4, 16, False), (4, 0, 4, 4, 9, False), (4, 8, 0, 1, 1, False), (8, 128, 0, 4, 3, False),
    (8, 0, 8, 2, 16, False), (2, 2, 0, 2, 8, False), (2, 0, 2, 1, 12, False), (4, 8, 0, 4, 1, False),
    (4, 0, 0, 4, 16, True), (4, 0, 0, 2, 3, True), (4, 0, 0, 1, 1, True), (4, 8, 0, 4, 24, False),
    (8, 0, 8, 4, 64, False), (4, 0, 0, 4, 40, True)])
def test_fragment_emulation_reproduces_the_product(bits, flip, zero_bits, v, m, table):
    rng = np.random.default_rng(bits * 100 + v + m + table)
    e, nj, rows = 32 // bits, ck.mma_batch_tiles(m), min(m, 8)
    ck_codes, mmas, half = 4 * v * e, v * e // 4, e // 2
    codes = rng.integers(0, 1 << bits, (16, ck_codes))
    zeros = rng.integers(0, 1 << zero_bits, 16) if zero_bits else np.zeros(16, np.int64)
    words = (codes.reshape(16, 4 * v, e) << (bits * np.arange(e))).sum(axis=2)  # code k at bits B (k % E)
    x = rng.standard_normal((8 * nj, ck_codes)).astype(np.float16).astype(np.float64)
    x[m:] = 0  # load_halves stages zeros past M
    tile = _stage_x(x, bits, v, nj, rows, table)
    values = rng.standard_normal(16).astype(np.float16)  # a user's table, already binary16
    expanded = _expanded_table(values)
    got = np.zeros((16, 8 * nj))
    for s in range(mmas):
        for j in range(nj):
            a, b = np.zeros((16, 16)), np.zeros((16, 8))
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                for r in range(2):  # pair 2s: a0, a1, b0 (k 2t..); pair 2s + 1: a2, a3, b1 (k 2t + 8..)
                    pair = 2 * s + r
                    q, p = pair // half, pair % half
                    for row in (g, g + 8):
                        word = int(words[row, v * t + q])
                        a[row, 2 * t + 8 * r:2 * t + 8 * r + 2] = (
                            _table_pair_values(word, p, expanded, lane) if table
                            else _pair_values(word, p, bits, flip, int(zeros[row])))
                    if lane < 4 * rows:  # the other lanes' B registers are zero
                        b[2 * t + 8 * r:2 * t + 8 * r + 2, g] = tile[ck.mma_x_word(0, j, pair, lane, mmas, nj, rows)]
            got[:, 8 * j:8 * j + 8] += a @ b
    weights = values.astype(np.float64)[codes] if table else (codes ^ flip) - flip - zeros[:, None]
    np.testing.assert_allclose(got, weights @ x.T, rtol=1e-12, atol=1e-9)
    k = ck.mma_fragment_k(bits, v, table)  # each lane's pairs cover the chunk once, as staged
    assert sorted(k.ravel()) == list(range(ck_codes))
    for t in range(4):
        for pair in range(v * e // 2):
            word = ck.mma_x_word(0, 0, pair, t, mmas, nj, rows)  # lane t: batch row 0
            np.testing.assert_array_equal(tile[word], x[0, k[t, pair]])


# ------------------------------------------------------------------------------------------------
# GPU

GPU_CASES = [("int4", 1, 4096, 1024, 128), ("int4", 3, 100, 1000, 128), ("int4", 16, 259, 4096, 128),
             ("int4", 9, 33, 8192, 128), ("int4", 5, 17, 256, 64), ("int4_asym", 16, 130, 2048, 128),
             ("int4_asym", 2, 77, 1500, 128), ("int8", 7, 70, 2048, 128), ("int8", 16, 48, 512, 32),
             ("int2", 12, 300, 2048, 128), ("int8_asym", 4, 40, 1024, 128), ("int2_asym", 16, 64, 768, 64),
             ("nf4", 16, 259, 4096, 128), ("nf4", 1, 4096, 1024, 128), ("fp4_e2m1", 3, 100, 1000, 128),
             ("flint4", 9, 33, 2048, 64), ("shift4", 5, 17, 256, 32), ("fp4_er_pos", 12, 70, 1024, 128),
             ("int4", 24, 259, 4096, 128), ("int4", 64, 300, 2048, 128), ("int4_asym", 33, 77, 1500, 128),
             ("int8", 64, 48, 512, 32), ("nf4", 40, 130, 2048, 64), ("fp4_e2m1", 17, 100, 1000, 128)]


@pytest.mark.gpu
@pytest.mark.skipif(cupy_gpu_missing() is not None, reason=str(cupy_gpu_missing()))
@pytest.mark.parametrize("fmt,m,n,k,gs", GPU_CASES, ids=lambda v: str(v))
def test_int_mma_cupy_against_reference(fmt, m, n, k, gs):
    from hwlab.kernels.testing import worst_error

    qt = _quantize(fmt, n, k, gs, seed=m * 1000 + n)
    dt = qt.to("cuda")
    for trial in range(2):  # fresh inputs, poisoned outputs
        x = (torch.randn(m, k, device="cuda") * (1 + 3 * trial)).half()
        out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.float16)
        got = ck.int_mma_cupy(x, dt, out=out)
        assert got is out
        torch.cuda.synchronize()
        assert torch.isfinite(got).all()
        worst = worst_error(got, x, qt)
        assert worst <= 1.0, f"{fmt} M={m} N={n} K={k} gs={gs}: error {worst:.3g} x tolerance"
    if m == 1:  # [K] in, [1, N] out (split-K's fp32 atomics add in any order: not bit for bit the same)
        single = ck.int_mma_cupy(x[0], dt)
        assert single.shape == (1, n) and worst_error(single, x, qt) <= 1.0


@pytest.mark.gpu
@pytest.mark.skipif(cupy_gpu_missing() is not None, reason=str(cupy_gpu_missing()))
def test_int_mma_cupy_saturates_and_leaves_the_workspace_zeroed():
    from hwlab.kernels import dispatch

    qt = _quantize("int4", 256, 8192)
    dt = qt.to("cuda")
    x = torch.full((16, 8192), 60000.0, device="cuda").half()
    y = ck.int_mma_cupy(x, dt)
    assert torch.isfinite(y).all() and float(y.abs().max()) == 65504
    lp = ck.mma_launch_plan(dt.plan, 16, "float16", torch.cuda.get_device_properties(0).multi_processor_count)
    assert lp["splits"] > 1
    work, count = dispatch.split_workspace(x.device, 16 * 256, lp["row_blocks"])
    torch.cuda.synchronize()
    assert not work.any() and not count.any()
    x[3, 5] = float("nan")
    y = ck.int_mma_cupy(x, dt)
    assert torch.isnan(y[3]).all() and torch.isfinite(y[torch.arange(16) != 3]).all()


TILE_VARIANTS = [dict(MMA_WAVES=0), dict(MMA_WAVES=0, MMA_TILES=2, MMA_WARPS=3),
                 dict(MMA_PREFETCH={1: 1, 2: 1, 4: 2, 8: 2}), dict(MMA_PREFETCH={1: 3, 2: 4, 4: 1, 8: 1}, MMA_TILES=2),
                 dict(MMA_X_BYTES=4096, MMA_WARPS=1), dict(MMA_WAVES=4, MMA_PREFETCH={1: 4, 2: 2, 4: 1, 8: 1}),
                 dict(MMA_ASYNC={1: 4, 2: 3, 4: 2, 8: 2}),
                 dict(MMA_ASYNC={1: 2, 2: 2, 4: 2, 8: 2}, MMA_TILES=2, MMA_WAVES=0),
                 dict(MMA_M_BLOCK_TILES=8), dict(MMA_M_BLOCK_TILES=1, MMA_WAVES=0)]


def _fewest_splits(lp: dict) -> int:
    """The splits a block's x tile needs (within MMA_X_BYTES): all of them where MMA_WAVES = 0."""
    chunk_bytes = lp["nj"] * lp["x_rows"] * lp["codes_per_chunk"] * 2
    per_block = min(lp["chunks"], max(1, ck.MMA_X_BYTES // chunk_bytes))
    return -(-lp["chunks"] // per_block)


@pytest.mark.parametrize("constants", TILE_VARIANTS, ids=lambda v: str(v))
@pytest.mark.parametrize("fmt,m,n,k", [("int4", 16, 200, 2048), ("int4", 40, 90, 1024), ("int4", 64, 90, 1024)])
def test_tile_variants_split_k_only_where_x_needs_it_without_waves(constants, fmt, m, n, k, monkeypatch):
    for name, value in constants.items():
        monkeypatch.setattr(ck, name, value)
    plan = build_plan(_quantize(fmt, n, k))
    lp = ck.mma_launch_plan(plan, m)
    fewest = _fewest_splits(lp)
    assert lp["splits"] >= fewest and (constants.get("MMA_WAVES") != 0 or lp["splits"] == fewest)
    assert lp["m_blocks"] == -(-m // (8 * lp["nj"])) and lp["grid"] == (lp["blocks_per_split"] * lp["splits"],
                                                                        lp["m_blocks"])


@pytest.mark.gpu
@pytest.mark.skipif(cupy_gpu_missing() is not None, reason=str(cupy_gpu_missing()))
@pytest.mark.parametrize("constants", TILE_VARIANTS, ids=lambda v: str(v))
@pytest.mark.parametrize("fmt,m,n,k", [("int4", 16, 200, 2048), ("int4_asym", 5, 77, 1500), ("int8", 11, 90, 1024),
                                       ("nf4", 7, 90, 1024), ("int4", 40, 90, 1024)])
def test_int_mma_cupy_tile_variants(constants, fmt, m, n, k, monkeypatch):
    """Other tile constants (MMA_WAVES=0: no split-K, each block stores its rows) give correct results too."""
    from hwlab.kernels.testing import worst_error

    for name, value in constants.items():
        monkeypatch.setattr(ck, name, value)
    qt = _quantize(fmt, n, k, seed=n)
    dt = qt.to("cuda")
    lp = ck.mma_launch_plan(dt.plan, m, "float16", torch.cuda.get_device_properties(0).multi_processor_count)
    fewest = _fewest_splits(lp)
    assert lp["splits"] >= fewest and (constants.get("MMA_WAVES") != 0 or lp["splits"] == fewest)
    x = torch.randn(m, k, device="cuda").half()
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.float16)
    ck.int_mma_cupy(x, dt, out=out)
    torch.cuda.synchronize()
    assert worst_error(out, x, qt) <= 1.0


# ------------------------------------------------------------------------------------------------
# matmul's dispatch to the CuPy kernel

def test_matmul_takes_the_cupy_kernel_only_on_cuda():
    """Off CUDA (here: CPU tensors) ``launch_for`` is the Triton launch of ``choose`` whatever M and dtype."""
    from hwlab.kernels import dispatch

    dt = _quantize("int4", 64, 1024).to("cpu")
    for m in (1, 4, 16):
        assert not dispatch.cupy_mma_applies(dt, m, "float16")
        assert dispatch.launch_for(dt, m, "float16") == dispatch.choose(dt.plan, m, dispatch.device_sms(dt.device))
    for m in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="m must be a whole number of activation rows, at least 1, got"):
            dispatch.launch_for(dt, m, "float16")
    for dtype in ("fp16", None, torch.float16, "float64"):
        with pytest.raises(ValueError, match=r"x_dtype must be one of \('float16', 'bfloat16'\)"):
            dispatch.launch_for(dt, 4, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(cupy_gpu_missing() is not None, reason=str(cupy_gpu_missing()))
@pytest.mark.parametrize("fmt", ["int4", "int4_asym", "int8", "int2"])
def test_matmul_takes_the_cupy_kernel_for_fp16_batches_of_2_to_64(fmt, monkeypatch):
    """``hwlab.kernels.matmul`` runs int_mma_cupy for fp16 x of 2..64 rows (any leading shape; two M-blocks past
    32), and the Triton kernels for M = 1, M > 64, bf16 x, or with ``CUPY_MMA`` off; every output within the bound.
    (The widths and the layer size where it is taken, CUPY_MMA_BITS and CUPY_MMA_MIN_WEIGHTS, are opened to this
    small layer.)"""
    from hwlab import kernels
    from hwlab.kernels import dispatch
    from hwlab.kernels.testing import worst_error

    qt = _quantize(fmt, 300, 2048)
    dt = qt.to("cuda")
    assert not dispatch.cupy_mma_applies(dt, 4, "float16")  # a layer below those timed: the Triton kernels
    monkeypatch.setattr(dispatch, "CUPY_MMA_BITS", (2, 4, 8))
    monkeypatch.setattr(dispatch, "CUPY_MMA_MIN_WEIGHTS", dict.fromkeys(dispatch.CUPY_MMA_MIN_WEIGHTS, 0))
    cases = [((4, 2048), torch.float16, "int_mma_cupy"), ((2, 8, 2048), torch.float16, "int_mma_cupy"),
             ((1, 2048), torch.float16, "gemv_words"), ((17, 2048), torch.float16, "int_mma_cupy"),
             ((5, 8, 2048), torch.float16, "int_mma_cupy"), ((64, 2048), torch.float16, "int_mma_cupy"),
             ((65, 2048), torch.float16, "tile_dot"), ((16, 2048), torch.bfloat16, "tile_dot")]
    for shape, dtype, kernel in cases:
        x = torch.randn(*shape, device="cuda").to(dtype)
        m = x.numel() // 2048
        assert dispatch.launch_for(dt, m, str(dtype).removeprefix("torch.")).kernel == kernel
        assert kernel in kernels.explain(dt, m, str(dtype).removeprefix("torch."))
        out = torch.full(shape[:-1] + (300,), float("nan"), device="cuda", dtype=dtype)
        kernels.matmul(x, dt, out=out)
        torch.cuda.synchronize()
        assert worst_error(out.reshape(m, 300), x.reshape(m, 2048), qt) <= 1.0, (shape, dtype)
    monkeypatch.setattr(dispatch, "CUPY_MMA", False)
    assert dispatch.launch_for(dt, 4, "float16").kernel == "tile_dot"


def test_matmul_falls_back_to_triton_where_the_cupy_kernel_cannot_be_prepared(kernel_device, monkeypatch):
    """CuPy installed but unusable (here: made to fail on the CPU): matmul warns once, names the error, and gives
    the Triton kernels' result, within the bound."""
    from hwlab import kernels
    from hwlab.kernels import dispatch
    from hwlab.kernels.testing import worst_error

    def broken(dt, m):
        raise RuntimeError("cudaErrorInsufficientDriver")

    monkeypatch.setattr(dispatch, "cupy_mma_applies", lambda qt, m, x_dtype: True)
    monkeypatch.setattr(ck, "int_mma_launcher", broken)
    qt = _quantize("int4", 40, 512)
    dt = qt.to(kernel_device)
    x = torch.randn(4, 512).half().to(kernel_device)
    with pytest.warns(RuntimeWarning, match="could not be prepared.*cudaErrorInsufficientDriver.*Triton"):
        y = kernels.matmul(x, dt)
    assert dt.prepared[(x.shape, x.dtype, x.device)].launch.kernel == "tile_dot"
    assert worst_error(y, x, qt) <= 1.0
