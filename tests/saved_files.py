"""Reading and rewriting saved tensor files as a hostile user would (the storage tests' helpers)."""
import json

from hwlab.formats import storage
from safetensors import safe_open
from safetensors.numpy import save_file


def read(path):
    """The arrays of a saved file and its ``hwlab`` metadata."""
    with safe_open(path, framework="numpy") as fh:
        names = fh.keys()  # a safe_open is not iterable
        return {k: fh.get_tensor(k) for k in names}, json.loads(fh.metadata()["hwlab"])


def write(path, arrays, meta, checksums=True, digest=True):
    """A file of ``arrays`` and ``meta``, the arrays' checksums recomputed (``checksums``) and the
    metadata's digest recomputed (``digest``): both for a consistent edit, neither for a stale file."""
    meta = dict(meta)
    if checksums:
        meta["checksums"] = {k: storage.checksum(v) for k, v in arrays.items()}
    if digest:
        meta["digest"] = storage.digest(meta)
    save_file(dict(arrays), str(path), metadata={"hwlab": json.dumps(meta)})
    return path
