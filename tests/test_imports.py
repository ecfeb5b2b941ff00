"""The import graph is the architecture: modules import only their own layer and the layers below it.

Layers, bottom first (a module belongs to the layer of the longest prefix that names it):

    errors, fileio, stopping, metrics_writer   leaves
    configlib, data.tokenizer_names        typed sections; the tokenizer table that config_base checks
    models                                 model families declare their config sections (configlib only)
    config_base                            the one config tree, assembled from the model sections
    schedules, data, checkpoint, ...       pure functions of the config; corpora; orbax
    diffusion, state, sft                  losses; the model placed on a mesh
    train, sampling                        the train step; the sampler loop
    inference, prompts, evaluation, ...    what runs a trained workdir
    interop, aot, cli                      conversions and the binaries' shared code

Function-level imports count too: hiding an upward import inside a function hides the architecture.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "proseco_jax"
LAYERS = (
    ("errors", "fileio", "locks", "stopping", "metrics_writer", "host_memory"),
    ("configlib", "data.tokenizer_names"),
    ("models",),
    ("config_base",),
    ("schedules", "data", "checkpoint", "sharding", "samples_io"),
    ("diffusion", "state", "sft"),
    ("train", "sampling"),
    ("inference", "prompts", "evaluation", "benchmarking"),
    ("interop", "aot", "recorded_config", "cli"),
)
def _modules() -> dict[str, str]:
    """{dotted module name: file} of every module of the package."""
    out = {}
    for directory, _, names in os.walk(os.path.join(ROOT, PACKAGE)):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                parts = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
                out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(path: str, module: str) -> set[str]:
    """The package's modules that `module` imports anywhere in its file (`from pkg import mod` names
    mod; importing a name from a module names that module)."""
    is_package = path.endswith("__init__.py")
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # Relative: resolved against this module's package.
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != module and m != PACKAGE}


GRAPH = {module: _imports(path, module) for module, path in MODULES.items()}


def _layer(module: str) -> int | None:
    """The layer of `module` (None for package __init__ files that only group their modules)."""
    best, layer = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            full = f"{PACKAGE}.{prefix}"
            if (module == full or module.startswith(full + ".")) and len(full) > best:
                best, layer = len(full), index
    return layer


def test_every_module_has_a_layer():
    assert f"{PACKAGE}.config_base" in MODULES
    assert [m for m in MODULES if m != PACKAGE and _layer(m) is None] == []


def test_no_module_imports_a_higher_layer():
    upward = {(a, b) for a, imported in GRAPH.items() for b in imported
              if _layer(a) is not None and _layer(b) is not None and _layer(b) > _layer(a)}
    assert sorted(upward) == []


def _cycles() -> set[tuple[str, ...]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.add(tuple(sorted(component)))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = _cycles()
    assert sorted(cycles) == []


def test_the_layering_sees_an_upward_import(monkeypatch):
    monkeypatch.setitem(GRAPH, f"{PACKAGE}.errors", {f"{PACKAGE}.cli"})
    with pytest.raises(AssertionError):
        test_no_module_imports_a_higher_layer()


def test_the_cycle_check_sees_a_cycle(monkeypatch):
    convert, llada = f"{PACKAGE}.interop.convert", f"{PACKAGE}.interop.llada"
    monkeypatch.setitem(GRAPH, llada, GRAPH[llada] | {convert})
    assert (convert, llada) in _cycles()


def test_every_module_imports_in_a_fresh_interpreter_bottom_up():
    """Each module imports on its own, lowest layer first: no module needs a higher one to be loaded."""
    order = sorted((m for m in MODULES if m != PACKAGE), key=lambda m: (_layer(m), m))
    script = f"import importlib\nfor name in {order!r}:\n    importlib.import_module(name)\n"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
