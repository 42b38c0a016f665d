"""The boundaries the tree promises, enforced by walking the import graph of the source.

Every `import` and `from ... import` in a module counts, at any depth (a lazy import inside a
function still runs in the same process). The top-level packages say where code runs:

- `service/`: the async service, one event loop; never reaches `training/`, `cli/` or a heavy library;
- `training/`: the training child; never reaches `service/` or `cli/`;
- `foundation/`: imported by both, so it reaches neither side and no heavy library;
- `messages/`: the wire contract, pydantic only;
- `cli/`: the command line, the one package that may name both sides (each command imports its own).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "foundation", "messages", "service", "training")
HEAVY = ("torch", "pytorch_lightning", "lightning", "mlflow", "onnx", "onnxruntime", "onnxscript", "numpy", "scipy",
         "matplotlib")
MAX_MODULE_LINES = 300
SIZE_NOTE_OVER_LINES = 270  # a module this long says why in its docstring ("Size: ..."): never by accident
MAX_FUNCTION_LINES = 50


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    paths = [p for package in PACKAGES for p in ROOT.glob(f"{package}/**/*.py")]
    return {module_name(p): p for p in paths}


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every module `path` imports, absolute: `from a import b` is `a.b` when that is a module, else `a`."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names)
    return found


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    modules = modules or source_modules()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def reachable(graph: dict[str, set[str]], starts) -> dict[str, str]:
    """Every module reachable from `starts`, each with one module that imports it (for the message)."""
    seen = {s: "(start)" for s in starts}
    todo = list(starts)
    while todo:
        here = todo.pop()
        for target in graph.get(here, ()):
            # A package import also runs the package's __init__.
            for candidate in package_chain(target):
                if candidate not in seen:
                    seen[candidate] = here
                    todo.append(candidate)
    return seen


def package_chain(target: str) -> list[str]:
    parts = target.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def top(name: str) -> str:
    return name.split(".")[0]


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def modules_of(graph: dict[str, set[str]], package: str) -> list[str]:
    return [m for m in graph if within(m, package)]


def forbidden_reach(graph: dict[str, set[str]], package: str, never: tuple[str, ...]) -> dict[str, str]:
    """What `package`'s modules reach that they must not: a package in `never`, or a heavy library."""
    seen = reachable(graph, modules_of(graph, package))
    return {m: f"imported by {seen[m]}" for m in sorted(seen)
            if any(within(m, p) for p in never) or top(m) in HEAVY}


def test_the_messages_contract_imports_only_itself():
    graph = import_graph()
    offenders = {m: sorted(t for t in graph[m] if top(t) in PACKAGES and top(t) != "messages")
                 for m in modules_of(graph, "messages")}
    assert not {m: t for m, t in offenders.items() if t}


def test_the_async_service_never_reaches_training_the_cli_or_heavy_libraries():
    assert not forbidden_reach(import_graph(), "service", ("training", "cli"))


def test_the_foundation_belongs_to_neither_side():
    assert not forbidden_reach(import_graph(), "foundation", ("service", "training", "cli"))


def test_the_training_child_never_reaches_the_async_service_or_the_cli():
    seen = reachable(import_graph(), modules_of(import_graph(), "training"))
    forbidden = sorted(m for m in seen if within(m, "service") or within(m, "cli"))
    assert not forbidden, {m: f"imported by {seen[m]}" for m in forbidden}


def test_there_is_no_import_circle_between_modules():
    graph = import_graph()
    internal = {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}
    colour: dict[str, int] = {}
    circles = []

    def visit(node, path):
        colour[node] = 1
        for nxt in sorted(internal[node]):
            if colour.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in colour:
                visit(nxt, path + [nxt])
        colour[node] = 2

    for m in sorted(internal):
        if m not in colour:
            visit(m, [m])
    assert not circles


def test_the_graph_walk_sees_a_forbidden_import(tmp_path):
    """The checks above would catch `import torch` in the consumer or the service in training."""
    (tmp_path / "service").mkdir()
    (tmp_path / "training").mkdir()
    consumer = tmp_path / "service" / "consumer.py"
    consumer.write_text("import json\n\ndef f():\n    import torch\n")
    app = tmp_path / "service" / "app.py"
    app.write_text("def serve():\n    pass\n")
    fit = tmp_path / "training" / "fit.py"
    fit.write_text("from service.app import serve\n")
    modules = {"service.consumer": consumer, "training.fit": fit, "service.app": app}
    graph = import_graph(modules)
    assert "torch" in reachable(graph, ["service.consumer"])
    assert "service.app" in reachable(graph, ["training.fit"])


def test_importing_the_async_service_loads_no_heavy_library():
    importable = [m for m in modules_of(import_graph(), "service") if not within(m, "service.migrations")]  # alembic runs those
    code = ("import sys; import " + ", ".join(importable) + "; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=ROOT).stdout.split())
    assert not loaded & set(HEAVY)


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in source_modules().values()
                                        if "migrations/versions" not in p.as_posix()))
def test_modules_and_functions_stay_readable(path):
    source = (ROOT / path).read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{path}: {len(source.splitlines())} lines"
    if len(source.splitlines()) > SIZE_NOTE_OVER_LINES:
        assert "\nSize: " in (ast.get_docstring(ast.parse(source)) or ""), f"{path}: near the limit, and not said why"
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path}: {long}"


# Who may touch the protocol's writing end: the child's entry opens its channel; the service's
# runner encodes what it sends the child (a JobSpec, a PermitAnswer). Every other module only
# sends through `channel()`, or reads messages; none writes protocol lines of its own.
PROTOCOL_WRITERS = {"open_channel": {"training.child"}, "ChildChannel": set(), "encode": {"service.runner.child_process"}}


def protocol_names_used(path: Path) -> set[str]:
    """The writing-end names that `path` imports from foundation.child_protocol."""
    return {alias.name for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.ImportFrom) and node.module == "foundation.child_protocol"
            for alias in node.names if alias.name in PROTOCOL_WRITERS}


def protocol_offenders(modules: dict[str, Path]) -> dict[str, list[str]]:
    found = {name: sorted(n for n in protocol_names_used(path) if name not in PROTOCOL_WRITERS[n])
             for name, path in modules.items() if name != "foundation.child_protocol"}
    return {name: names for name, names in found.items() if names}


def test_only_the_protocol_module_writes_protocol_messages():
    assert not protocol_offenders(source_modules())


def test_the_protocol_check_sees_a_module_writing_messages_of_its_own(tmp_path):
    rogue = tmp_path / "rogue.py"
    rogue.write_text("from foundation.child_protocol import ChildChannel, encode\n")
    assert protocol_offenders({"training.fit": rogue}) == {"training.fit": ["ChildChannel", "encode"]}


FIXTURE_IMPORT_MARK = "noqa: F401 (fixture"  # how a fixture imported to be found by name was marked


def test_no_test_module_is_imported_and_no_fixture_travels_by_import():
    """Shared fixtures live in conftest.py files, shared helpers in tests/support/: a test module is
    never a library for another, and a fixture is never imported to be found by name."""
    offenders = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if any(name.startswith("tests.") and name.rpartition(".")[2].startswith(("test_", "conftest"))
                   for name in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
        if FIXTURE_IMPORT_MARK in path.read_text() and path != Path(__file__):
            offenders.append(f"{path.relative_to(ROOT)}: a fixture imported")
    assert not offenders
