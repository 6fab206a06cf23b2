"""``python -m gluon_losses.fused build``: (re)build the fused operator's library, for a
machine whose install had no compiler or whose MXNet changed since."""
import argparse
import os
import sys

from . import build, user_build_dir


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gluon_losses.fused",
                                     description="Build the fused softmax CE operator.")
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--into", default=None,
                        help="folder to write the library to (default: the package's own, "
                             "or %s where that is read-only)" % user_build_dir())
    args = parser.parse_args(argv)
    folder = args.into or (build.HERE if os.access(build.HERE, os.W_OK) else user_build_dir())
    try:
        path = build.build(folder)
    except build.BuildError as error:
        sys.exit("gluon_losses.fused build failed: %s" % error)
    print("built %s" % path)


if __name__ == "__main__":
    main()
