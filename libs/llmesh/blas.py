"""Which BLAS MLX's CPU backend uses, and how to give it an optimized one on Linux.

The ``mlx-cpu`` wheel links the reference BLAS it bundles
(``mlx_cpu.libs/libblas-*.so``): ~5-7 GFLOP/s whatever the shape. Preloading an
optimized OpenBLAS (``LD_PRELOAD``) interposes ``cblas_sgemm`` and makes prefill
and batched decode an order of magnitude faster. The preload must be in place
when the process starts, so :func:`reexec_with_openblas` re-executes the process
(an inference worker, or a memory service embedding in-process) once with the right
environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import site
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REEXEC_MARKER = "LLMESH_BLAS_PRELOADED"
"""Set in the environment of a re-executed worker so it never loops."""

DEBIAN_OPENBLAS = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
)


@dataclass(frozen=True)
class BlasPreload:
    """Environment changes that preload an optimized OpenBLAS."""

    library: Path
    library_path: tuple[Path, ...]

    def apply(self, env: Mapping[str, str]) -> dict[str, str]:
        """A copy of ``env`` with ``LD_PRELOAD`` and ``LD_LIBRARY_PATH`` extended."""
        out = dict(env)
        preload = [str(self.library), *filter(None, out.get("LD_PRELOAD", "").split(":"))]
        out["LD_PRELOAD"] = ":".join(dict.fromkeys(preload))
        if self.library_path:
            paths = [str(p) for p in self.library_path]
            paths += list(filter(None, out.get("LD_LIBRARY_PATH", "").split(":")))
            out["LD_LIBRARY_PATH"] = ":".join(dict.fromkeys(paths))
        out[REEXEC_MARKER] = "1"
        return out


def _site_dirs() -> list[Path]:
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    with contextlib.suppress(AttributeError):  # a virtualenv without site
        dirs += site.getsitepackages()
    dirs += [p for p in sys.path if p.endswith("site-packages")]
    return [Path(d) for d in dict.fromkeys(dirs)]


def _system_has(soname: str) -> bool:
    try:
        out = subprocess.run(
            ["ldconfig", "-p"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return (
            ctypes.util.find_library(soname.split(".so", maxsplit=1)[0].removeprefix("lib"))
            is not None
        )
    return any(line.strip().startswith(soname + " ") for line in out.splitlines())


def _gfortran_dir(libs: Path, cache_dir: Path) -> Path | None:
    """A directory with ``libgfortran.so.5`` pointing at the copy mlx-cpu bundles."""
    bundled = sorted(libs.glob("libgfortran-*.so.5*"))
    if not bundled:
        return None
    for base in (cache_dir, Path(tempfile.gettempdir()) / f"llmesh-blas-{os.getuid()}"):
        target = base / "libgfortran.so.5"
        try:
            base.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() and target.resolve() == bundled[0].resolve():
                return base
            tmp = base / f".libgfortran.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(bundled[0])
            tmp.replace(target)
            return base
        except OSError:
            continue
    return None


def find_openblas_preload(cache_dir: Path | None = None) -> BlasPreload | None:
    """How to preload an optimized OpenBLAS here, or ``None`` when none is installed.

    Prefers Debian's ``libopenblas0-pthread``; else PyPI's ``cmeel-openblas``, whose
    ``libgfortran.so.5`` dependency comes from Debian or from the copy that
    ``mlx-cpu`` bundles under a hashed name (reached through a symlink directory).
    """
    if not sys.platform.startswith("linux"):
        return None
    for candidate in DEBIAN_OPENBLAS:
        if Path(candidate).is_file():
            return BlasPreload(Path(candidate), ())
    for sp in _site_dirs():
        lib = sp / "cmeel.prefix" / "lib" / "libopenblas.so.0"
        if not lib.is_file():
            continue
        if _system_has("libgfortran.so.5"):
            return BlasPreload(lib, ())
        mlx_libs = sp / "mlx_cpu.libs"
        cache = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
        gdir = _gfortran_dir(mlx_libs, cache / "llmesh" / "blas-libs")
        if gdir is None:
            return None
        # mlx_cpu.libs also holds the libquadmath that the bundled libgfortran needs.
        return BlasPreload(lib, (gdir, mlx_libs))
    return None


def sgemm_library() -> str | None:
    """Path of the shared library that ``cblas_sgemm`` resolves to in this process."""

    class _DlInfo(ctypes.Structure):
        _fields_ = [
            ("dli_fname", ctypes.c_char_p),
            ("dli_fbase", ctypes.c_void_p),
            ("dli_sname", ctypes.c_char_p),
            ("dli_saddr", ctypes.c_void_p),
        ]

    try:
        libc = ctypes.CDLL(None)
        symbol = ctypes.cast(libc.cblas_sgemm, ctypes.c_void_p)
        info = _DlInfo()
        dladdr = libc.dladdr
        dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        if dladdr(symbol, ctypes.byref(info)) and info.dli_fname:
            return str(info.dli_fname.decode())
    except (AttributeError, OSError):
        return None
    return None


def detect_blas(device: str = "cpu") -> str:
    """``"openblas"``, ``"reference"``, ``"accelerate"`` (macOS) or ``"n/a"`` (GPU).

    Call after MLX is imported: on Linux it reads which library ``cblas_sgemm``
    resolves to (an ``LD_PRELOAD``-ed OpenBLAS wins over mlx-cpu's reference BLAS).
    """
    if device != "cpu":
        return "n/a"
    if sys.platform == "darwin":
        return "accelerate"
    lib = sgemm_library() or _mapped_blas()
    if lib is None:
        return "unknown"
    name = Path(lib).name
    if "openblas" in name:
        return "openblas"
    if name.startswith("libblas"):
        return "reference"
    return name


def _mapped_blas() -> str | None:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    # NumPy's bundled libscipy_openblas64_ exports suffixed symbols (cblas_sgemm64_) and
    # never serves MLX's cblas_sgemm: it must not count as MLX running on OpenBLAS.
    libs = [
        line.split()[-1]
        for line in maps.splitlines()
        if "blas" in line and "scipy_openblas" not in line
    ]
    for lib in libs:
        if "openblas" in lib:
            return lib
    return libs[0] if libs else None


def reexec_with_openblas(
    argv: Sequence[str],
    *,
    module: str = "llmesh_inference",
    threads: int | None = None,
    switch: str = "LLMESH_INFERENCE_BLAS_PRELOAD",
) -> None:
    """Re-execute this process once with an optimized OpenBLAS preloaded (Linux only).

    Returns (does nothing) when not on Linux, when already re-executed, when the
    environment variable ``switch`` is ``0``, or when no OpenBLAS is installed;
    otherwise replaces the process (``os.execve``) running ``python -m <module> <argv>``,
    with ``OPENBLAS_NUM_THREADS=threads`` when ``threads`` is given. Used by the
    inference worker and by a memory service that embeds in-process.
    """
    if not sys.platform.startswith("linux") or os.environ.get(REEXEC_MARKER):
        return
    if os.environ.get(switch, "1").lower() in {"0", "false", "no"}:
        return
    preload = find_openblas_preload()
    if preload is None:
        return
    env = preload.apply(os.environ)
    if threads is not None:
        env["OPENBLAS_NUM_THREADS"] = str(threads)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)
