"""Packaging: the library needs mxnet and numpy only; training-only packages stay optional."""
import ast
import configparser
import os
import sys

import pytest

from loopback_cluster import run_python
from stock_mxnet import run_stock_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "gluon_losses")
# Installed by the `train` extra only; `import gluon_losses` must not pull any of them.
TRAINING_ONLY = ("gluoncv", "sklearn", "tqdm", "matplotlib", "pandas")


def read_setup_cfg():
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    return config


def requirement_lines(value):
    return [line.strip() for line in value.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_install_requires_is_exactly_mxnet_and_pinned_numpy():
    config = read_setup_cfg()
    assert requirement_lines(config["options"]["install_requires"]) == [
        "mxnet==1.9.1", "numpy>=1.17,<1.24"]


def test_training_packages_live_in_extras():
    extras = read_setup_cfg()["options.extras_require"]
    assert set(extras) == {"train", "test", "bench"}
    train = " ".join(requirement_lines(extras["train"]))
    for name in ("gluoncv", "opencv-python", "pandas", "matplotlib", "scipy", "Pillow",
                 "scikit-learn", "tqdm"):
        assert name in train, name


def test_python_requires_allows_boolean_optional_action():
    # the examples use argparse.BooleanOptionalAction (new in 3.9)
    assert read_setup_cfg()["options"]["python_requires"].strip() == ">=3.9"


def top_level_imports(path):
    """Absolute module names imported by ``path`` outside any function or class body."""
    with open(path) as handle:
        tree = ast.parse(handle.read(), path)
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_library_files_import_only_numpy_mxnet_and_the_standard_library():
    allowed = {"numpy", "mxnet"} | set(sys.stdlib_module_names)
    files = []
    for folder, _, names in os.walk(PACKAGE):
        files += [os.path.join(folder, n) for n in names if n.endswith(".py")]
    assert len(files) >= 8
    for path in files:
        extra = top_level_imports(path) - allowed
        assert not extra, "%s imports %s at module level" % (os.path.relpath(path, ROOT),
                                                              sorted(extra))


def test_import_gluon_losses_loads_nothing_beyond_mxnet():
    # mxnet itself imports scipy, cv2 and sklearn when they are installed, so the check is
    # what `import gluon_losses` loads on top of `import mxnet`.
    code = ("import sys, numpy, mxnet; before = set(sys.modules); import gluon_losses; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))")
    done = run_python(code, 120)
    assert done.returncode == 0, done.stderr
    loaded = set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))
    assert "gluon_losses" in loaded
    assert not set(TRAINING_ONLY) & loaded
    assert loaded <= {"gluon_losses"} | set(sys.stdlib_module_names), loaded


def test_stock_mxnet_venv_has_mxnet_but_not_the_package(tmp_path):
    result = run_stock_python("""
        import mxnet, numpy
        try:
            import gluon_losses
        except ImportError:
            print("absent", mxnet.__version__, numpy.__version__)
    """, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["absent", "1.9.1"]


def test_the_install_built_the_fused_operator_where_a_compiler_exists():
    from gluon_losses import fused
    try:
        fused._build.compiler()
    except fused._build.BuildError as error:
        pytest.skip("no compiler here, so the install could not build it: %s" % error)
    if fused.disabled_by_environment():
        pytest.skip("GLUON_LOSSES_FUSED=0")
    assert fused.available(), fused.unavailable_reason()


def build_wheel(tmp_path, **env):
    """``pip wheel`` of a copy of the tracked tree (the build leaves nothing in the
    checkout), with ``env`` added to the environment; returns the wheel's path."""
    import shutil
    import subprocess
    source = tmp_path / "source"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, stdout=subprocess.PIPE,
                           universal_newlines=True, check=True).stdout.split()
    for name in files:
        os.makedirs(os.path.dirname(str(source / name)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), str(source / name))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(source)],
                   check=True, timeout=600, env=dict(os.environ, **env))
    wheel, = os.listdir(str(tmp_path / "wheel"))
    return str(tmp_path / "wheel" / wheel)


def test_a_wheel_carries_the_library_built_for_this_mxnet_and_the_platform_tag(tmp_path):
    import json
    import zipfile
    from gluon_losses import fused
    try:
        fused._build.compiler()
    except fused._build.BuildError as error:
        pytest.skip("no compiler here, so no wheel can carry the library: %s" % error)
    wheel = build_wheel(tmp_path)
    assert wheel.endswith("-py3-none-linux_x86_64.whl"), wheel  # never "any": native code
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        library = "gluon_losses/fused/" + fused._build.LIBRARY_NAME
        assert library in names and library + ".json" in names, names
        stamp = json.loads(archive.read(library + ".json"))
    import mxnet as mx
    assert stamp["mxnet"] == mx.__version__


def test_without_a_compiler_the_install_still_succeeds_without_the_library(tmp_path):
    import zipfile
    from gluon_losses import fused
    wheel = build_wheel(tmp_path, CXX="no-such-compiler")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "gluon_losses/softmax_ce.py" in names
    assert not any(name.endswith(fused._build.LIBRARY_NAME) for name in names), names


def test_a_failed_horovod_install_names_its_step_in_the_skip_reason(tmp_path, monkeypatch):
    """make horovod writes each step to .venv/.horovod-failed before running it; the
    Horovod tests then skip with that step, not with a bare import error."""
    import horovod_cluster
    step = tmp_path / ".horovod-failed"
    step.write_text("building horovod==0.28.1 (log: .venv/horovod-build.log)\n")
    monkeypatch.setattr(horovod_cluster, "FAILED_STEP", str(step))
    horovod_cluster.unavailable_reason.cache_clear()
    try:
        assert horovod_cluster.unavailable_reason() == (
            "make horovod failed while building horovod==0.28.1 (log: .venv/horovod-build.log)")
    finally:
        horovod_cluster.unavailable_reason.cache_clear()
