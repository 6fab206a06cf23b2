"""Every ```python block of README.md and docs/**/*.md runs as written, each on its own.

One subprocess per Markdown file runs that file's blocks one after another, each in a
fresh namespace, in a scratch folder; a failure names the file and the block's line.
"""
import glob
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKDOWN = sorted([os.path.join(ROOT, "README.md")] + glob.glob(
    os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
FENCE = re.compile(r"^```(\S*)\s*$")

# Runs in the subprocess: reads [[line, code], ...] and the file name from stdin.
RUNNER = r"""
import json, sys, traceback
spec = json.load(sys.stdin)
for line, code in spec["blocks"]:
    try:
        exec(compile(code, "%s, block at line %d" % (spec["file"], line), "exec"),
             {"__name__": "__main__"})
    except BaseException:
        traceback.print_exc()
        print("FAILED: %s, the python block at line %d" % (spec["file"], line))
        sys.exit(1)
print("ran %d blocks" % len(spec["blocks"]))
"""


def python_blocks(path):
    """``[(line of the opening fence, code), ...]`` of the ```python blocks in ``path``."""
    blocks, current, start = [], None, 0
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, 1):
            fence = FENCE.match(text)
            if current is None and fence:
                current, start, language = [], number, fence.group(1)
            elif current is not None and text.rstrip() == "```":
                if language == "python":
                    blocks.append((start, "".join(current)))
                current = None
            elif current is not None:
                current.append(text)
    assert current is None, "%s: the block opened at line %d is never closed" % (path, start)
    return blocks


def test_blocks_are_found():
    readme = python_blocks(os.path.join(ROOT, "README.md"))
    assert len(readme) >= 3
    assert python_blocks(os.path.join(ROOT, "docs", "api.md"))


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: os.path.relpath(p, ROOT))
def test_python_blocks_run(path, tmp_path):
    blocks = python_blocks(path)
    if not blocks:
        pytest.skip("no python blocks")
    name = os.path.relpath(path, ROOT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, "-c", RUNNER], cwd=str(tmp_path), env=env,
                          input=json.dumps({"file": name, "blocks": blocks}),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, "%s\n%s" % (done.stdout[-3000:], done.stderr[-3000:])
    assert "ran %d blocks" % len(blocks) in done.stdout


def test_readme_is_a_short_front_door():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        assert len(handle.read().splitlines()) <= 250


def test_relative_links_resolve():
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)|src=\"([^\"]+)\"")
    for path in MARKDOWN:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        for match in link.finditer(text):
            target = match.group(1) or match.group(2)
            if re.match(r"[a-z]+:", target):
                continue
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
            assert os.path.exists(resolved), "%s links to missing %s" % (
                os.path.relpath(path, ROOT), target)


# Docs state results and how to reproduce them, not how a session went.
CHATTER = re.compile(r"load average|\bcommits? [0-9a-f]{7,40}\b|an earlier version|"
                     r"other engineers|\btoday\b(?! \|)", re.IGNORECASE)


def test_no_lab_notebook_chatter():
    for path in MARKDOWN:
        name = os.path.relpath(path, ROOT)
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                assert not CHATTER.search(line), "%s:%d: %s" % (name, number, line.strip())
