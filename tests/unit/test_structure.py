"""The tree's rules, read from the source with ``ast`` (README, "Development"):

* imports flow one way: a module imports from its own package and from lower layers only,
  lazy imports inside functions and ``TYPE_CHECKING`` blocks included;
* no two modules import each other, directly or through others;
* no class on the message path takes more than six constructor parameters.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "handlers", "service")

# Low to high. A unit may import itself and any unit of a lower layer, nothing else.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("schemas",),
    ("handlers",),
    ("service.concurrency", "service.lifecycle", "service.telemetry"),
    ("service.store", "service.broker"),
    ("service.pacing",),
    ("service.settings",),
    ("service.api",),
    ("service.guardrails",),
    ("service.messages",),
    ("service.backend",),
    ("service.ops", "service.sandbox"),
    ("service.runtime",),
    ("service.demo",),
    ("service.cli",),
)

MESSAGE_PATH = (
    "service/messages",
    "service/api/client.py",
    "service/api/bss.py",
    "service/api/credentials.py",
    "service/guardrails/gate.py",
)
MAX_PARAMETERS = 6
# Records of data, not classes of collaborators (the rule is about what a class is built from).
PARAMETERS_EXEMPT = {
    "Delay": "a settlement value; no call passes more than six of its fields",
    "_Line": "the bookkeeping of one parking line (counters and instants)",
    "Noted": "one command's whereabouts (identifiers and instants)",
    "Drain": "how one line drains: rates and counts, and sums derived from them",
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import of the project's own code in the file, anywhere."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from service.store import locks`` imports the module service.store.locks
            targets = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in MODULES
                else node.module
                for alias in node.names
            ]
        else:
            assert not isinstance(node, ast.ImportFrom), f"{path}: relative import"
            continue
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                yield node.lineno, target


def _unit(module: str) -> tuple[str, int] | None:
    for level, units in enumerate(LAYERS):
        for unit in units:
            if module == unit or module.startswith(unit + "."):
                return unit, level
    return None


def test_every_module_has_a_place_in_the_layers() -> None:
    homeless = [m for m in MODULES if m != "service" and _unit(m) is None]
    assert homeless == [], "place these in LAYERS (and in the README's drawing)"


def test_imports_flow_one_way() -> None:
    wrong = []
    for module, path in MODULES.items():
        here = _unit(module)
        for line, target in _imports(path):
            there = _unit(target)
            assert there is not None, f"{module}:{line} imports {target}, which has no layer"
            if here is None:  # the bare ``service`` package imports nothing of ours
                wrong.append(f"{module}:{line} -> {target}")
            elif there[0] != here[0] and there[1] >= here[1]:
                wrong.append(f"{module}:{line} -> {target} ({here[0]} may not import {there[0]})")
    assert wrong == []


def _owner_of(target: str) -> str:
    """The module an import loads last: the target itself, or the package defining the name."""
    while target not in MODULES:
        target = target.rsplit(".", 1)[0]
    return target


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import ring of ``graph``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (ring := visit(nxt)) is not None:
                return ring
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (ring := visit(node)) is not None:
            return ring
    return None


def test_no_module_imports_itself_through_others() -> None:
    graph = {
        module: {_owner_of(t) for _, t in _imports(path)} - {module}
        for module, path in MODULES.items()
    }
    assert _cycle(graph) is None


def test_the_cycle_finder_finds_a_ring() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _parameters(node: ast.ClassDef) -> int | None:
    """Constructor parameters of a class: its ``__init__``'s, or a dataclass's fields."""
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            args = item.args
            return len(args.posonlyargs) + len(args.args) - 1 + len(args.kwonlyargs)
    decorators = [d.func if isinstance(d, ast.Call) else d for d in node.decorator_list]
    if any(isinstance(d, ast.Name) and d.id == "dataclass" for d in decorators):
        return sum(1 for item in node.body if isinstance(item, ast.AnnAssign))
    return None


def _message_path_classes() -> Iterator[tuple[str, int]]:
    for entry in MESSAGE_PATH:
        where = ROOT / entry
        for path in sorted(where.rglob("*.py")) if where.is_dir() else [where]:
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and (count := _parameters(node)) is not None:
                    yield f"{path.relative_to(ROOT)}:{node.name}", count


@pytest.mark.parametrize(("name", "count"), list(_message_path_classes()))
def test_no_class_on_the_message_path_takes_more_than_six_parameters(name: str, count: int) -> None:
    if name.rsplit(":", 1)[1] in PARAMETERS_EXEMPT:
        return
    assert count <= MAX_PARAMETERS, f"{name} takes {count}: group what belongs together"


def _runtime_steps() -> Iterator[tuple[str, int]]:
    tree = ast.parse((ROOT / "service" / "runtime.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            yield node.name, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize(("name", "length"), list(_runtime_steps()))
def test_each_step_of_the_composition_root_is_under_30_lines(name: str, length: int) -> None:
    assert length < 30, f"service/runtime.py:{name} is {length} lines: split it into named steps"
