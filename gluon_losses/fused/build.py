"""Compile the fused operator's library; the standard library only, so that setup.py can
run it before the package (or even NumPy) imports.

``setup.py`` calls :func:`build` when the package is installed (``pip install .``, ``-e``
or a wheel), and ``python -m gluon_losses.fused build`` calls it again on a machine whose
install had no compiler. The library is compiled against the installed MXNet's own
``lib_api.h`` and ``lib_api.cc`` and stamped with that MXNet's version and the hash of
the sources, which the loader checks before it loads anything.
"""
import fcntl
import glob
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "softmax_ce.cc")
# The linker version script: the library exports MXNet's loader entry points only.
EXPORTS = os.path.join(HERE, "exports.map")
LIBRARY_NAME = "libgluon_losses_softmax_ce.so"
# Portable flags only: the hot loops carry their own AVX2 and AVX-512 clones, picked at
# load time (see GL_MULTIVERSION in the source). -fno-trapping-math lets comparisons
# be vectorised; NaN semantics are kept (no -ffast-math).
CXXFLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-fno-trapping-math",
            "-fno-math-errno"]


class BuildError(RuntimeError):
    """The library could not be built; the message says why and what to do."""


def mxnet_dir():
    """The installed mxnet package's folder, found without importing it."""
    spec = importlib.util.find_spec("mxnet")
    if spec is None or not spec.origin:
        raise BuildError("mxnet is not installed in this environment")
    return os.path.dirname(os.path.abspath(spec.origin))


def mxnet_version(folder=None):
    """The installed MXNet's version, read from its libinfo.py without importing mxnet."""
    with open(os.path.join(folder or mxnet_dir(), "libinfo.py")) as handle:
        for line in handle:
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    raise BuildError("no __version__ in mxnet's libinfo.py")


def source_hash():
    """What the library is built from: the operator's source, the export list, the flags."""
    digest = hashlib.sha256(" ".join(CXXFLAGS).encode())
    for path in (SOURCE, EXPORTS):
        with open(path, "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()


def stamp_path(library):
    return library + ".json"


def compiler():
    """The compiler's command line: ``$CXX`` (split as a shell would, so ``ccache g++``
    works), else ``c++`` or ``g++`` on PATH. Raises BuildError naming what was tried."""
    given = os.environ.get("CXX")
    if given:
        words = shlex.split(given)
        if words and shutil.which(words[0]):
            return words
        raise BuildError("CXX=%r does not name a program on PATH" % given)
    for name in ("c++", "g++"):
        if shutil.which(name):
            return [name]
    raise BuildError("no C++ compiler: CXX is not set and neither c++ nor g++ is on PATH")


def _version_number(version):
    major, minor, patch = (int(part) for part in version.split(".")[:3])
    return major * 10000 + minor * 100 + patch


def build(folder=HERE):
    """Compile the library into ``folder`` (the package's own by default); returns its path.

    A lock file serializes processes building into the same folder; the library and its
    stamp appear by an atomic rename, so a reader sees the old pair or the new one, and
    a build killed half-way leaves only temporary files, which the next build removes.
    """
    mxnet = mxnet_dir()
    version = mxnet_version(mxnet)
    command = compiler()
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, LIBRARY_NAME)
    with open(os.path.join(folder, ".build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Holding the lock, every temporary file here is a dead build's.
        for stale in glob.glob(os.path.join(folder, ".partial-*")):
            os.remove(stale)
        handle, partial = tempfile.mkstemp(prefix=".partial-", suffix=".so", dir=folder)
        os.close(handle)
        try:
            result = subprocess.run(
                command + CXXFLAGS + [
                    "-DGLUON_LOSSES_MXNET_VERSION=%d" % _version_number(version),
                    "-I", os.path.join(mxnet, "include"), "-Wl,--version-script=" + EXPORTS,
                    SOURCE, os.path.join(mxnet, "src", "lib_api.cc"), "-o", partial],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
            if result.returncode != 0:
                raise BuildError("%s failed (exit %d): %s" % (
                    " ".join(command), result.returncode, result.stdout.strip()[-2000:]))
            os.chmod(partial, 0o755)
            os.replace(partial, target)
            with open(stamp_path(target) + ".partial", "w") as handle:
                json.dump({"mxnet": version, "source": source_hash()}, handle)
            os.replace(stamp_path(target) + ".partial", stamp_path(target))
        finally:
            for leftover in (partial, stamp_path(target) + ".partial"):
                if os.path.exists(leftover):
                    os.remove(leftover)
    return target
