"""Sweeps: a grid over formats, group sizes, hardware and workloads, run on a process pool or Dask.

A spec is a TOML file; every key is checked (an unknown key, a wrong type, an unknown format,
machine or model is a :class:`SweepError` naming the file and the key)::

    formats = ["int4", "nf4", "bitmod_fp4"]      # registered format names
    group_sizes = [64, 128]                      # positive integers
    hardware = ["bitmod", "ant", "a77"]          # accelerator or edge presets, or accelerator/edge .toml files
    weights = "sample"                           # optional: hwlab's sample weights (default), or a
                                                 # .safetensors/.npz/.npy file (paths relative to the spec)
    [[workloads]]
    model = "llama2-7b"                          # a built-in model or a Hugging Face config.json
    phase = "decode"                             # optional: decode (default) or prefill
    batch = 1                                    # optional, default 1
    context = 256                                # optional, default 256

A point is one (format, group size, machine, workload); :func:`evaluate` computes it as a pure
function of the point: the weights quantized (stored bits, MSE, SQNR, as :mod:`hwlab.study.measure`
aggregates them) and the model's workload simulated on the machine with the format's code bits and
stored bits (:func:`hwlab.study.hardware.machine_runs`). A pair the quantizer refuses, or a machine
that does not run the format, is recorded as not applicable with the reason.

Results go to ``OUT.partial`` one JSON line per finished point, flushed and fsynced, in the order
points finish; a rerun skips the points already there (a line cut short by an interruption is
dropped and recomputed; a line computed from another weights file, by its ``weights_sha256``, or a
second, different result for a point is refused). When every point is done, the lines are written in grid order to ``OUT``
(through a temporary file and a rename) and ``OUT.partial`` is removed: ``OUT`` is the same, byte
for byte, whichever executor ran the points.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tempfile
import threading
import tomllib

from hwlab.output import strict

SPEC_KEYS = {"formats", "group_sizes", "hardware", "workloads", "weights"}
REQUIRED_KEYS = ("formats", "group_sizes", "hardware", "workloads")
WORKLOAD_KEYS = {"model": str, "phase": str, "batch": int, "context": int}
WORKLOAD_DEFAULTS = {"phase": "decode", "batch": 1, "context": 256}
SAMPLE = "sample"
CONNECT_TIMEOUT_S = 5  # how long to wait for a Dask scheduler before calling it unreachable
PARTIAL_SUFFIX = ".partial"


class SweepError(ValueError):
    """A bad sweep spec, output file or executor address (one line: what, where, what was expected)."""


# ---- the spec --------------------------------------------------------------------------------

def load_spec(path) -> dict:
    """The checked spec of a TOML file: ``formats``, ``group_sizes``, ``hardware``, ``workloads``
    (each with every field filled in), ``weights`` and ``base`` (the spec's folder)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: " + ("is a directory, not a spec file" if path.is_dir() else "no such file"))
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise SweepError(f"{path} is not valid TOML: not UTF-8 text") from None
    return check_spec(data, path)


def check_spec(data: dict, path) -> dict:
    """``data`` (a parsed spec) checked key by key; errors name ``path`` and the key."""
    where = str(path)
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise SweepError(f"{where}: unknown key {unknown[0]!r}; a spec has {sorted(SPEC_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise SweepError(f"{where}: missing key {key!r}")
    base = pathlib.Path(path).resolve().parent
    spec = {"formats": _names(data, "formats", where), "group_sizes": _group_sizes(data, where),
            "hardware": _names(data, "hardware", where), "weights": data.get("weights", SAMPLE),
            "workloads": _workloads(data, where), "base": str(base)}
    from hwlab.formats import get_format

    for name in spec["formats"]:
        try:
            get_format(name)
        except ValueError as exc:
            raise SweepError(f"{where}: formats: {exc}") from None
    for name in spec["hardware"]:
        try:
            resolve_machine(name, base)
        except (ValueError, OSError) as exc:
            raise SweepError(f"{where}: hardware: {exc}") from None
    if not isinstance(spec["weights"], str) or not spec["weights"]:
        raise SweepError(f"{where}: weights must be \"{SAMPLE}\" or a file path, got {spec['weights']!r}")
    try:
        read_weights(spec["weights"], base)
    except (ValueError, OSError, KeyError) as exc:
        raise SweepError(f"{where}: weights: {exc}") from None
    return spec


def _names(data, key, where) -> list[str]:
    value = data[key]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise SweepError(f"{where}: {key} must be a non-empty list of names, got {value!r:.80}")
    _no_repeats(value, key, where)
    return value


def _group_sizes(data, where) -> list[int]:
    value = data["group_sizes"]
    if not isinstance(value, list) or not value or \
            not all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in value):
        raise SweepError(f"{where}: group_sizes must be a non-empty list of positive integers, got {value!r:.80}")
    _no_repeats(value, "group_sizes", where)
    return value


def _no_repeats(values, key, where) -> None:
    seen = set()
    for v in values:
        marker = json.dumps(v, sort_keys=True)
        if marker in seen:
            raise SweepError(f"{where}: {key} lists {v!r} twice")
        seen.add(marker)


def _workloads(data, where) -> list[dict]:
    from hwlab.sim import Workload

    tables = data["workloads"]
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise SweepError(f"{where}: workloads must be a non-empty array of tables ([[workloads]] with a model)")
    out = []
    for i, table in enumerate(tables):
        label = f"{where}: workloads[{i}]"
        unknown = sorted(set(table) - set(WORKLOAD_KEYS))
        if unknown:
            raise SweepError(f"{label}: unknown key {unknown[0]!r}; a workload has {sorted(WORKLOAD_KEYS)}")
        if "model" not in table:
            raise SweepError(f"{label}: missing key 'model'")
        w = {**WORKLOAD_DEFAULTS, **table}
        for key, kind in WORKLOAD_KEYS.items():
            if not isinstance(w[key], kind) or isinstance(w[key], bool):
                raise SweepError(f"{label}: {key} must be {'a string' if kind is str else 'an integer'}, "
                                 f"got {w[key]!r:.60}")
        try:
            Workload.for_model(_model_path(w["model"], pathlib.Path(where).resolve().parent), w["phase"],
                               w["batch"], w["context"])
        except (ValueError, TypeError, OSError) as exc:
            raise SweepError(f"{label}: {exc}") from None
        out.append(w)
    _no_repeats(out, "workloads", where)
    return out


def _model_path(model: str, base: pathlib.Path) -> str:
    """A model name as is; a ``config.json`` path relative to the spec's folder."""
    return str(base / model) if model.endswith(".json") else model


def resolve_machine(name: str, base):
    """The machine a ``hardware`` entry names: an accelerator or edge preset, or a ``.toml`` file
    (an edge core where it has ``latency``/``throughput`` tables or starts from an edge preset)."""
    from hwlab.sim import PRESETS, get_preset, load_config
    from hwlab.sim.edge import ALIASES, get_edge_preset, load_edge_config
    from hwlab.sim.edge import PRESETS as EDGE_PRESETS

    if not name.endswith(".toml"):
        if name in EDGE_PRESETS or name in ALIASES:
            return get_edge_preset(name)
        if name in PRESETS:
            return get_preset(name)
        raise ValueError(f"unknown machine {name!r}; accelerator presets {sorted(PRESETS)}, edge presets "
                         f"{sorted(EDGE_PRESETS)}, or a .toml configuration file")
    path = pathlib.Path(base) / name
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such configuration file (looked in {path.parent})")
    with open(path, "rb") as fh:
        try:
            data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path} is not valid TOML: {exc}") from None
    edge = "latency" in data or "throughput" in data or data.get("preset") in EDGE_PRESETS
    return load_edge_config(path) if edge else load_config(path)


def read_weights(weights: str, base) -> dict:
    """The weight matrices of a spec's ``weights``: hwlab's sample file, or a file relative to ``base``."""
    from hwlab.sample import sample_path
    from hwlab.study import load_weights

    return load_weights(sample_path() if weights == SAMPLE else pathlib.Path(base) / weights)


def weights_fingerprint(weights: str, base) -> str:
    """The sha256 of a spec's weights file: a resumed sweep refuses lines computed from other weights."""
    import hashlib

    from hwlab.sample import sample_path

    digest = hashlib.sha256()
    with open(sample_path() if weights == SAMPLE else pathlib.Path(base) / weights, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def grid(spec: dict) -> list[dict]:
    """Every point of the spec, in grid order (formats, then group sizes, machines, workloads)."""
    return [{"format": f, "group_size": g, "hardware": h, "workload": w, "weights": spec["weights"]}
            for f in spec["formats"] for g in spec["group_sizes"] for h in spec["hardware"] for w in spec["workloads"]]


def point_key(point: dict) -> str:
    """The canonical JSON of a point: what identifies a finished point in a results file."""
    return json.dumps(point, sort_keys=True, separators=(",", ":"))


# ---- one point -------------------------------------------------------------------------------

def evaluate(point: dict, base: str) -> dict:
    """The results of one point (a pure function of it; ``base`` is the spec's folder, where its
    relative paths start): ``bits_per_weight``, ``mse``, ``sqnr_db`` and the machine's ``runs``, or
    ``status`` "not applicable" with the ``reason``."""
    from hwlab.formats import get_format
    from hwlab.sim import Workload
    from hwlab.study.hardware import machine_runs
    from hwlab.study.measure import Variant, measure

    fmt = get_format(point["format"])
    try:
        fmt.check_group_size(point["group_size"])
        measured = measure(Variant(point["format"], point["group_size"]), read_weights(point["weights"], base))
    except ValueError as exc:
        return {"status": "not applicable", "reason": str(exc)}
    w = point["workload"]
    work = Workload.for_model(_model_path(w["model"], pathlib.Path(base)), w["phase"], w["batch"], w["context"])
    runs, reason = machine_runs(resolve_machine(point["hardware"], base), work, measured.first,
                                measured.summary["bits_per_weight"])
    summary = {k: measured.summary[k] for k in ("code_bits", "bits_per_weight", "mse", "sqnr_db")}
    if reason is not None:
        return {"status": "not applicable", "reason": reason, **summary}
    return {"status": "ok", **summary, "runs": runs}


def _evaluate_line(point: dict, base: str) -> str:
    """One results line: the point's key, the point and its results (strict JSON)."""
    record = {"key": point_key(point), "point": point, "result": evaluate(point, base),
              "weights_sha256": weights_fingerprint(point["weights"], base)}
    return json.dumps(strict(record), sort_keys=True, allow_nan=False)


# ---- running ---------------------------------------------------------------------------------

def finished(partial: pathlib.Path, fingerprint: str | None = None) -> dict:
    """key -> line of the points already in ``partial``; a last line cut short is removed from the file.
    ``fingerprint``: the weights' :func:`weights_fingerprint`; a line computed from other weights is refused."""
    if not partial.exists():
        return {}
    if not partial.is_file():
        raise SweepError(f"{partial} (where an interrupted sweep keeps its finished points) is not a file; remove it")
    done, good = {}, 0
    with open(partial, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                if not raw.endswith(b"\n"):  # every line is written with its newline: this one was cut
                    raise ValueError("cut short")
                record = json.loads(raw)
                key, line = record["key"], raw.decode().rstrip("\n")
                consistent = isinstance(key, str) and key == point_key(record["point"])
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                break  # a line the interruption cut short: it and anything after it are recomputed
            if not consistent:
                raise SweepError(f"{partial}: line {number} is a result whose key does not match its point; "
                                 "the file was edited or mixes runs: remove it to recompute every point")
            if fingerprint is not None and record.get("weights_sha256") != fingerprint:
                raise SweepError(f"{partial}: line {number} was computed from other weights (the weights file "
                                 "changed since the interrupted run): remove it to recompute every point")
            if done.get(key, line) != line:
                raise SweepError(f"{partial}: line {number} repeats a point with a different result; the "
                                 "file mixes runs (other weights or another hwlab?): remove it to recompute")
            done[key] = line
            good += len(raw)
    with open(partial, "r+b") as fh:
        fh.truncate(good)
    return done


def run_sweep(spec: dict, out, *, dask: str | None = None, workers: int | None = None, force: bool = False,
              progress: bool = True) -> dict:
    """Compute every point of ``spec`` not already in ``OUT.partial``, then write ``out``.

    ``dask``: ``None`` (a local process pool of ``workers`` processes, default one per core), a
    scheduler address (``tcp://host:8786``) or ``"local"`` (a ``distributed.LocalCluster`` of
    ``workers`` processes). Returns ``{points, computed, resumed, out}``.
    """
    out = pathlib.Path(out)
    check_out(out, force)
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    points = grid(spec)
    fingerprint = weights_fingerprint(spec["weights"], spec["base"])
    done = finished(partial, fingerprint)
    todo = [p for p in points if point_key(p) not in done]
    resumed = len(points) - len(todo)
    if todo:
        with _executor(dask, workers) as run_points, open(partial, "a") as fh:
            for line in run_points(todo, spec["base"], progress):
                record = json.loads(line)
                if record["weights_sha256"] != fingerprint:
                    raise SweepError(f"the weights file {spec['weights']} changed while the sweep ran; run it again")
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                done[record["key"]] = line
    _write_final(out, [done[point_key(p)] for p in points])
    partial.unlink(missing_ok=True)
    return {"points": len(points), "computed": len(todo), "resumed": resumed, "out": str(out)}


def check_out(out: pathlib.Path, force: bool) -> None:
    """The results file may not be a folder, nor (without ``force``) an existing file."""
    if out.is_dir():
        raise SweepError(f"--out {out} is a directory; name a *.jsonl file")
    if out.suffix != ".jsonl":
        raise SweepError(f"--out {out}: results are JSON lines; name the file *.jsonl")
    if not out.resolve().parent.is_dir():
        raise SweepError(f"--out {out}: directory {out.resolve().parent} does not exist")
    if out.exists() and not force:
        raise SweepError(f"--out {out} exists (a finished sweep); pass --force to replace it")


def _write_final(out: pathlib.Path, lines: list[str]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.resolve().parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write("".join(line + "\n" for line in lines))
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise


@contextlib.contextmanager
def _executor(dask: str | None, workers: int | None):
    """A function ``(points, base, progress) -> iterator of results lines`` (in the order they finish)
    on a local process pool or Dask; the Dask scheduler is reached (or refused) on entering."""
    if dask is None:
        import concurrent.futures
        import multiprocessing

        # spawn: a fork of a process whose numba or BLAS threads are running can deadlock
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            yield lambda points, base, progress: _progress(
                concurrent.futures.as_completed([pool.submit(_evaluate_line, p, base) for p in points]),
                len(points), progress)
        finally:  # an interruption: drop the points not started, finish (and lose) the running ones
            pool.shutdown(wait=True, cancel_futures=True)
        return
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise SweepError('--dask needs dask.distributed: pip install "hwlab[dask]"') from None
    if dask == "local":
        with LocalCluster(n_workers=workers or os.cpu_count(), threads_per_worker=1,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield _dask_runner(client, as_completed)
        return
    with _connect(Client, dask) as client:
        yield _dask_runner(client, as_completed)


def _connect(Client, address: str):
    """A ``distributed.Client`` of the scheduler at ``address``, or a :class:`SweepError` within about
    :data:`CONNECT_TIMEOUT_S` seconds. The client is made in a daemon thread: a peer that accepts the
    connection but never answers leaves ``Client(timeout=...)`` waiting for ever, and the command
    must still end with one line."""
    box = {}

    def connect():
        try:
            box["client"] = Client(address, timeout=CONNECT_TIMEOUT_S)
        except BaseException as exc:  # noqa: BLE001 - reported below, in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=connect, name="hwlab-dask-connect", daemon=True)
    thread.start()
    thread.join(2 * CONNECT_TIMEOUT_S)
    if "client" in box:
        return box["client"]
    why = f"{type(box['error']).__name__}: {box['error']}" if "error" in box else "no answer"
    raise SweepError(f"--dask {address}: cannot reach a Dask scheduler there within {CONNECT_TIMEOUT_S} s ({why})")


def _dask_runner(client, as_completed):
    def run_points(points, base, progress):
        futures = [client.submit(_evaluate_line, p, base, pure=False) for p in points]
        return _progress(as_completed(futures), len(points), progress)
    return run_points


def _progress(futures, total: int, progress: bool):
    """The results of ``futures`` as they finish, with a tqdm bar on stderr (where it is a terminal)."""
    from tqdm import tqdm

    with tqdm(total=total, desc="hwlab sweep", unit="point", disable=None if progress else True) as bar:
        for future in futures:
            line = future.result()
            bar.update()
            yield line
