"""Builds the fused operator's library while the package is installed (see setup.cfg for
the metadata). Without a compiler the install still succeeds: the losses then run on
MXNet's own operators, with a WARNING that names ``python -m gluon_losses.fused build``."""
import importlib.util
import os

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel

HERE = os.path.dirname(os.path.abspath(__file__))


def _fused_build_module():
    """gluon_losses/fused/build.py, loaded by path: the package itself imports mxnet."""
    spec = importlib.util.spec_from_file_location(
        "gluon_losses_fused_build", os.path.join(HERE, "gluon_losses", "fused", "build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithFusedOperator(build_py):
    """build_py, then the library beside the fused package's sources: in the wheel's tree
    (``pip install .``, a wheel), or in the source tree for an editable install."""

    def run(self):
        super().run()
        fused_build = _fused_build_module()
        if getattr(self, "editable_mode", False):
            folder = os.path.join(HERE, "gluon_losses", "fused")
        else:
            folder = os.path.join(self.build_lib, "gluon_losses", "fused")
            # A build folder left by an earlier install must not ship its old library.
            for name in (fused_build.LIBRARY_NAME, fused_build.LIBRARY_NAME + ".json"):
                if os.path.exists(os.path.join(folder, name)):
                    os.remove(os.path.join(folder, name))
        try:
            print("gluon_losses: built the fused operator: %s" % fused_build.build(folder))
            if folder != os.path.join(HERE, "gluon_losses", "fused"):
                os.remove(os.path.join(folder, ".build.lock"))  # no lock file in a wheel
        except (fused_build.BuildError, OSError) as error:
            print("gluon_losses: WARNING: the fused operator was not built (%s); the losses "
                  "will run on MXNet's own operators. Build it later with: "
                  "python -m gluon_losses.fused build" % error)


class DistributionWithLibrary(Distribution):
    """The package carries a native library, so its build and wheel are per platform."""

    def has_ext_modules(self):
        return True


class PlatformWheel(bdist_wheel):
    """Tagged with the platform, so that pip never installs the wheel where its library
    cannot load; for any Python 3, since the library links no Python (MXNet loads it)."""

    def get_tag(self):
        return ("py3", "none", super().get_tag()[2])


setup(distclass=DistributionWithLibrary,
      cmdclass={"build_py": BuildPyWithFusedOperator, "bdist_wheel": PlatformWheel})
