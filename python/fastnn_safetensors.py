"""A small safetensors reader for fastnn's Python-side checks and peers (no safetensors package).

    import sys; sys.path.insert(0, "<repo>/python")
    from fastnn_safetensors import read_safetensors
    tensors, metadata = read_safetensors("weights.safetensors", numpy)

Used by tests/interop/*.py and bench/lang_id_peer.py. numpy is passed in, so that a script can
report a missing numpy as a skip before importing this module's callers' dependencies.
"""

import json
import struct

DTYPES = {"F64": "<f8", "F32": "<f4", "I64": "<i8", "I32": "<i4", "U8": "u1"}


def read_safetensors(path, np):
    """Returns ({name: ndarray}, metadata) for a safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: too short")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise ValueError(f"{path}: header length {n} beyond the file")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = memoryview(blob)[8 + n:]
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, e in header.items():
        begin, end = e["data_offsets"]
        dt = np.dtype(DTYPES[e["dtype"]])
        arr = np.frombuffer(data[begin:end], dtype=dt).reshape(e["shape"])
        tensors[name] = arr.astype(dt.newbyteorder("="))
    return tensors, meta
