"""Every module of ``pathup`` and every name of each package's lazy face imports on its own (issue 18).

An import cycle shows only in some import orders: ``from pathup.sample import compose_to_folder`` failed
from a fresh interpreter ("cannot import name ... from partially initialized module") while the CLI,
which imported in another order, worked. So each module and each name is imported with no ``pathup``
module loaded before it.

Speed: a fresh ``python -c`` per target would pay for torch and diffusers each time (minutes). One
subprocess instead imports those third-party modules once and forks a child per target: the child starts
with no ``pathup`` module in ``sys.modules`` (which is all an import cycle depends on), so each module and
name still meets the package as a fresh interpreter does. Which third-party modules to preload is found
by a first child that imports the whole package. ``__main__`` is left out (importing it runs the CLI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pathup

ROOT = Path(pathup.__file__).parent

SERVER = textwrap.dedent(r"""
    import importlib, json, os, sys, traceback

    modules = json.loads(sys.argv[1])

    def in_child(work):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                out = work()
                code = 0
            except ModuleNotFoundError as err:  # an optional extra that is not installed
                out, code = f"missing {err.name}", 0 if not str(err.name).startswith("pathup") else 1
                if code:
                    out = traceback.format_exc(limit=-3)
            except BaseException:  # noqa: BLE001 - reported to the test
                out, code = traceback.format_exc(limit=-3), 1
            os.write(w, json.dumps([code, out]).encode())
            os.close(w)
            os._exit(0)
        os.close(w)
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
        return json.loads(data) if data else [1, "the child died without a report"]

    def discover():
        faces = {}
        for name in modules:
            try:
                mod = importlib.import_module(name)
            except BaseException:  # noqa: BLE001 - its own child below reports it
                continue
            if hasattr(mod, "__path__"):
                faces[name] = sorted(getattr(mod, "__all__", []))
        third = sorted(m for m in sys.modules if not m.startswith("pathup") and m != "__main__")
        return {"faces": faces, "third": third}

    code, found = in_child(discover)
    if code:
        print(json.dumps({"error": found})); sys.exit()
    assert not any(m.startswith("pathup") for m in sys.modules), "pathup loaded before the forks"
    for m in found["third"]:  # third-party modules once, here (each child inherits them)
        try:
            importlib.import_module(m)
        except BaseException:  # noqa: BLE001 - a child imports it again if it needs it
            pass
    sys.modules.pop("pathup", None)
    assert not any(m.startswith("pathup") for m in sys.modules), "a third-party module imported pathup"
    results = {}
    for name in modules:
        results[name] = in_child(lambda: importlib.import_module(name) and "ok")
    for package, names in found["faces"].items():
        for attr in names:
            if f"{package}.{attr}" in results:
                continue  # a submodule: imported above
            results[f"from {package} import {attr}"] = in_child(
                lambda: getattr(importlib.import_module(package), attr) is not None and "ok")
    print(json.dumps({"results": results}))
""")


def package_modules() -> list[str]:
    """Every module and package of ``pathup`` (by file), ``__main__`` left out."""
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_module_and_lazy_name_imports_in_a_fresh_interpreter():
    modules = package_modules()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT.parent)}
    proc = subprocess.run([sys.executable, "-c", SERVER, json.dumps(modules)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in report, report.get("error")
    results = report["results"]
    assert set(modules) <= set(results)
    assert sum(1 for k in results if k.startswith("from ")) > 50  # the lazy faces were read
    failed = {k: out for k, (code, out) in results.items() if code}
    assert not failed, "\n".join(f"{k}:\n{out}" for k, out in failed.items())


def _module_imports(path: Path, modules: set[str]) -> set[str]:
    """The ``pathup`` modules a file imports, also inside functions (not under ``if TYPE_CHECKING``)."""
    import ast

    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in
                   ast.unparse(node.test) for stmt in node.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pathup"):
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pathup")}
    return found & modules


def test_no_import_cycle_between_modules():
    """No module reaches itself through imports, counting those inside functions (a lazy import that
    closes a cycle works only while every caller keeps the order that hides it)."""
    files = {name: ROOT.parent.joinpath(*name.split(".")) for name in package_modules()}
    files = {name: p / "__init__.py" if p.is_dir() else p.with_suffix(".py") for name, p in files.items()}
    graph = {name: {d for d in _module_imports(p, set(files)) if d != name and not name.startswith(d + ".")}
             for name, p in files.items()}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep):] + [node, dep]) if dep in path else f"{node} -> {dep}")
            elif dep not in state:
                visit(dep, path + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert cycles == []
