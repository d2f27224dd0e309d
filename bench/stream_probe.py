"""GPU: the naive streaming kernel behind a GPU preset's ``stream_fraction`` (``hwlab.sim.gpu``): a Triton kernel
that only reads packed int32 code words, [N, K * bits / 32], and sums them per row (no decode, no x, no scales),
so its time is the memory floor a Triton GEMV over those words can reach.

The method of shared/REFERENCES.md's "GPU limits" (the H200's 0.74 of copy for W4 and 0.62 for W2 at K=8192,
N=28672): the words rotated past the L2 (``bench/gpu_kernels.py``'s ``copies_for``), do_bench medians and CUDA-graph
times, the fraction taken against the device copy of the same run; a few tiles, each printed, the best in a graph
(the clock a preset's fraction is for) kept. Beside
them a third clock, ``events``: the median of CUDA events around each of EVENT_CALLS rotated calls with nothing in
between, where do_bench zeroes a 256 MB buffer before each call (its L2 flush) and a graph replays calls back to
back (``events`` is host-bound where a call is shorter than its launch from Python). ``--gemv FMT ...`` times
``hwlab.kernels.matmul`` at M = 1 on the large layer with the same three clocks. ``stream.json`` in ``--out``.

    python bench/stream_probe.py --out DIR --gemv int4 nf4
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import triton
import triton.language as tl

import gpu_kernels as bench

SHAPES = [(8192, 28672, 4), (8192, 28672, 2), (4096, 4096, 4)]  # (K, N, code bits): the REFERENCES.md rows
TILES = [(16, 256, 4), (32, 128, 4), (8, 512, 4), (16, 512, 8), (64, 64, 4)]  # (rows, words, warps) a program
EVENT_CALLS = 200


@triton.jit
def row_sums(words, out, n, words_per_row, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
    """``out[r] = sum(words[r, :])`` (int32, wrapping) for BLOCK_N rows a program, BLOCK_W words a step."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N, BLOCK_W), dtype=tl.int32)
    for start in range(0, words_per_row, BLOCK_W):
        cols = start + tl.arange(0, BLOCK_W)
        mask = (rows[:, None] < n) & (cols[None, :] < words_per_row)
        acc += tl.load(words + rows[:, None] * words_per_row + cols[None, :], mask=mask, other=0)
    tl.store(out + rows, tl.sum(acc, axis=1), mask=rows < n)


def stream(words, out, tile) -> None:
    """Launch :func:`row_sums` over ``words`` [N, W] int32 with ``tile`` = (rows, words, warps)."""
    block_n, block_w, warps = tile
    n, w = words.shape
    row_sums[(triton.cdiv(n, block_n),)](words, out, n, w, BLOCK_N=block_n, BLOCK_W=block_w, num_warps=warps)


def event_us(call, items) -> float:
    """Median microseconds of CUDA events around each of EVENT_CALLS calls of ``call`` on ``items`` in turn (after
    as many warm-up calls), no flush between them."""
    import torch

    for i in range(EVENT_CALLS):
        call(items[i % len(items)])
    marks = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(EVENT_CALLS)]
    for i, (start, end) in enumerate(marks):
        start.record()
        call(items[i % len(items)])
        end.record()
    torch.cuda.synchronize()
    return float(np.median([start.elapsed_time(end) for start, end in marks])) * 1e3


def clocks(call, items) -> dict:
    """``call`` on ``items`` (rotated) under the three clocks, microseconds."""
    return dict(us=bench.bench_ms(bench.rotating(call, items)) * 1e3, us_events=event_us(call, items),
                us_graph=bench.graph_us([(lambda item=items[i % len(items)]: call(item))
                                         for i in range(bench.GRAPH_CALLS)]))


def fractions(row: dict, copy: float) -> str:
    """The row's fractions of copy under each clock (added to the row), as printed."""
    for clock in ("us", "us_events", "us_graph"):
        row["frac_of_copy" + clock[2:]] = row["bytes"] / (row[clock] * 1e-6) / 1e9 / copy if row[clock] else None
    return (f"do_bench {row['us']:7.1f} us ({row['frac_of_copy']:.2f} of copy), events {row['us_events']:7.1f} "
            f"({row['frac_of_copy_events']:.2f}), graph {row['us_graph'] or float('nan'):7.1f} "
            f"({row['frac_of_copy_graph'] or float('nan'):.2f})")


def gemv_rows(formats, copy: float) -> list[dict]:
    """``hwlab.kernels.matmul`` at M = 1, K=8192, N=28672 for each format under the three clocks."""
    import torch

    from hwlab.kernels import matmul
    from hwlab.kernels.testing import clone

    k, n, rows = 8192, 28672, []
    rng = np.random.default_rng(0)
    for fmt in formats:
        first = bench.tiled_tensor(fmt, k, n, rng).to("cuda")
        items = [first] + [clone(first) for _ in range(bench.copies_for(first.nbytes) - 1)]
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        out = torch.empty(1, n, device="cuda", dtype=torch.float16)
        row = dict(format=fmt, M=1, K=k, N=n, bytes=first.nbytes + 2 * (k + n),
                   **clocks(lambda w: matmul(x, w, out=out), items))
        print(f"matmul {fmt:10s} M=1 K={k} N={n}: {fractions(row, copy)}", flush=True)
        rows.append(row)
        del items, first
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--gemv", nargs="*", default=[], metavar="FMT", help="formats timed through matmul at M = 1")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.out):
        raise SystemExit(f"stream_probe.py: --out {args.out!r} is not a directory (stream.json is written there)")
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("stream_probe.py times a CUDA kernel: torch.cuda.is_available() is False here")
    run = bench.Run(args.out)
    bench.environment(run)
    bench.copy_bandwidth(run)
    copy = run.doc["env"]["copy_GBps"]
    rows = []
    for k, n, bits in SHAPES:
        w = k * bits // 32
        nbytes = n * w * 4
        items = [torch.randint(-2**31, 2**31 - 1, (n, w), device="cuda", dtype=torch.int32)
                 for _ in range(bench.copies_for(nbytes))]
        out = torch.empty(n, device="cuda", dtype=torch.int32)
        expected = items[0].to(torch.int64).sum(dim=1).remainder(2**32)
        for tile in TILES:
            call = lambda words, tile=tile: stream(words, out, tile)  # noqa: E731
            call(items[0])
            if not torch.equal(out.to(torch.int64).remainder(2**32), expected):
                raise SystemExit(f"stream_probe.py: row_sums with tile {tile} gave wrong sums at K={k} N={n}")
            row = dict(K=k, N=n, bits=bits, tile=list(tile), bytes=nbytes, **clocks(call, items))
            rows.append(row)
            print(f"W{bits} K={k:5d} N={n:5d} tile {tile}: {fractions(row, copy)}", flush=True)
        del items
        torch.cuda.empty_cache()
    best = {}
    for row in rows:
        key = f"W{row['bits']} K={row['K']} N={row['N']}"
        if key not in best or (row["us_graph"] or row["us"]) < (best[key]["us_graph"] or best[key]["us"]):
            best[key] = row
    for key, row in best.items():
        print(f"best {key}: {row['frac_of_copy']:.2f} of copy do_bench, {row['frac_of_copy_events']:.2f} events, "
              f"{row['frac_of_copy_graph'] or float('nan'):.2f} in a graph, tile {row['tile']}")
    gemv = gemv_rows(args.gemv, copy)
    with open(os.path.join(args.out, "stream.json"), "w") as f:
        json.dump(dict(env=run.doc["env"], argv=sys.argv[1:] if argv is None else list(argv), tiles=TILES,
                       event_calls=EVENT_CALLS, graph_calls=bench.GRAPH_CALLS, rotate_bytes=bench.ROTATE_BYTES,
                       rows=rows, best=best, gemv=gemv), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
