"""GPU timings as the benchmark and the study take them: ``do_bench`` medians and CUDA-graph replays.

``median_ms(fn)``: the median of ``triton.testing.do_bench`` (CUDA events around each call, after a
warm-up; the L2 is flushed between calls only as ``do_bench`` does it); a call launched from
Python, so a small kernel measures the host's time per call. ``graph_us(calls)``: the device time
of one call, from replays of a CUDA graph that captured ``calls`` one after another (what a decode
loop captured in a graph pays).
"""
from __future__ import annotations


def median_ms(fn) -> float:
    """Median milliseconds of ``fn()`` (``do_bench``: 25 ms warm-up, 100 ms of repetitions)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def graph_us(calls) -> float | None:
    """Microseconds a call inside one CUDA graph of ``calls`` (each run three times first, on the
    capture stream); ``None`` where capture fails (a peer library that cannot be captured), with
    the reason printed."""
    import torch

    try:
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            for c in calls[:3]:
                c()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for c in calls:
                c()
        torch.cuda.synchronize()
        return median_ms(graph.replay) * 1e3 / len(calls)
    except Exception as e:  # a peer that cannot be captured
        print(f"   (no CUDA graph: {type(e).__name__}: {str(e)[:80]})", flush=True)
        return None
