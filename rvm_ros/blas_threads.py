"""OpenBLAS's thread count in this process, set after numpy has loaded (no ROS import)."""

from __future__ import annotations


def limit_blas_threads(n: int = 1) -> bool:
    """Set OpenBLAS's thread count in this process (numpy may be imported before this module).

    ``OPENBLAS_NUM_THREADS`` only works before numpy loads; this calls the loaded library's
    ``*openblas_set_num_threads*`` instead -> True if one was found. Why: the tracker's
    similarity matmul (64 x 96 x 256) gets two BLAS threads by default, and on 2 shared cores
    the second one waits for a core: 23 ms vs 6 ms per tracker update, measured under load.
    """
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            libs = {ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln}
    except OSError:
        return False
    done = False
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for fn in (
            "scipy_openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_",
            "openblas_set_num_threads",
        ):
            if hasattr(lib, fn):
                getattr(lib, fn)(ctypes.c_int(n))
                done = True
                break
    return done
