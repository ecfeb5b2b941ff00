"""Gathers the docstrings of this Python's own standard library into .txt files: a real English corpus
(technical prose with code in it) that exists on any machine with Python, nothing downloaded.

    python launch/gather_stdlib_docs.py --output_dir=data/stdlib_docs
    python launch/demo.py --config=configs/text_files.py --workdir=runs/text_demo \
        --config.data.files='data/stdlib_docs/*.txt'

Every module of the standard library directory (`sysconfig`'s stdlib path; its test suites, site-packages
and files that do not parse left out) gives one file, MODULE.txt, holding the module's docstring and then
those of its classes and functions in source order, separated by blank lines. Modules with fewer than
--min_chars characters of docstrings are skipped. The files are sorted by module name, so with
`data.document_per=file` the validation split (the last documents) is a set of whole modules.
"""

from __future__ import annotations

import ast
import os
import sysconfig
from collections.abc import Iterator

from absl import flags

from proseco_jax import cli
from proseco_jax.errors import UsageError

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory to write MODULE.txt files to.",
                                  required=True)
_STDLIB = flags.DEFINE_string("stdlib", None, "Standard library directory (default: this Python's).")
_MIN_CHARS = flags.DEFINE_integer("min_chars", 200, "Skip modules with fewer characters of docstrings.",
                                  lower_bound=0)

_SKIPPED_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}


def module_files(root: str) -> Iterator[tuple[str, str]]:
    """(dotted module name, path) of every .py file under `root`, sorted, skipping _SKIPPED_DIRS."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in _SKIPPED_DIRS and not d.startswith(".")]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                parts = os.path.relpath(path, root)[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                if parts:
                    found.append((".".join(parts), path))
    yield from sorted(found)


def docstrings(source: str) -> list[str]:
    """The docstrings of a module's source in source order: the module's, then each class's and
    function's (nested ones included), cleaned of their indentation; [] if the source does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    nodes = [tree] + sorted((n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef,
                                                                          ast.AsyncFunctionDef))),
                            key=lambda n: (n.lineno, n.col_offset))
    texts = (ast.get_docstring(node, clean=True) for node in nodes)
    return [text.strip() for text in texts if text and text.strip()]


def gather(root: str, output_dir: str, min_chars: int) -> tuple[int, int]:
    """Writes output_dir/MODULE.txt for every module under `root` with at least `min_chars` characters
    of docstrings; returns (files written, characters written)."""
    os.makedirs(output_dir, exist_ok=True)
    written = chars = 0
    for module, path in module_files(root):
        try:
            with open(path, encoding="utf-8") as f:
                text = "\n\n".join(docstrings(f.read()))
        except (OSError, UnicodeDecodeError):
            continue
        if len(text) < max(min_chars, 1):
            continue
        with open(os.path.join(output_dir, f"{module}.txt"), "w", encoding="utf-8") as f:
            f.write(text + "\n")
        written, chars = written + 1, chars + len(text) + 1
    return written, chars


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    root = _STDLIB.value or sysconfig.get_paths()["stdlib"]
    if not os.path.isdir(root):
        raise UsageError(f"--stdlib {root} is not a directory")
    try:
        written, chars = gather(root, _OUTPUT_DIR.value, _MIN_CHARS.value)
    except OSError as e:
        raise UsageError(f"cannot write to --output_dir {_OUTPUT_DIR.value}: {e.strerror or e}") from None
    if not written:
        raise UsageError(f"no module under {root} has {_MIN_CHARS.value} characters of docstrings")
    print(f"wrote {written} files, {chars:,} characters of docstrings from {root} to {_OUTPUT_DIR.value}")


if __name__ == "__main__":
    cli.run(main)
