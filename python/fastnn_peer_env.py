"""What the PyTorch peers (bench/*_peer.py) report about the machine they ran on.

    import sys; sys.path.insert(0, "<repo>/python")
    from fastnn_peer_env import cpu_model, blas_info, peak_rss_mb, num

cpu_model() is the CPU's model name; blas_info() the BLAS library loaded into this process and, for
OpenBLAS, its configuration and the kernel (core) it runs, read from the library itself; peak_rss_mb()
this process's peak resident memory; num(v) maps NaN to None for JSON.
"""

import os
import platform
import resource


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def blas_info():
    """The loaded BLAS: {"libraries", "config", "core", "env"} (openblas_get_config / openblas_get_corename
    through ctypes); the environment's OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are reported next to it."""
    import ctypes
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({ln.split()[-1] for ln in f if "blas" in ln.rsplit("/", 1)[-1].lower() and "/" in ln})
    except OSError:
        libs = []
    info = {"libraries": libs, "config": None, "core": None,
            "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}}
    for lib in libs:
        try:
            dll = ctypes.CDLL(lib)
            corename, config = dll.openblas_get_corename, dll.openblas_get_config
        except (OSError, AttributeError):
            continue
        corename.restype = config.restype = ctypes.c_char_p
        info["core"], info["config"] = corename().decode(), config().decode()
        break
    return info


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def num(v):
    return None if v != v else v  # NaN -> null
