"""The project's shape (issue 25): modules a newcomer can hold, imports that run one way, no circle.

Read from the source with the standard library's ast, not by importing: a module is every .py file
of the project's packages (tests, bench and migrations aside), an import every `import` and
`from ... import` in it, at its top or inside a function (a circle closed by a deferred import is
still a circle), and under TYPE_CHECKING too.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("accounts", "api", "chat", "chatsite", "engine", "ops")
MAX_LINES = 400
# The domain (chat/) and the model server (engine/) sit under the doors (api/) and the operator's
# view (ops/): they tell those what happened through signals (chat/signals.py), never by import.
LOWER = ("chat", "engine")
UPPER = ("api", "ops")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "migrations" in parts:
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _project_module(name: str) -> str | None:
    """The project module `name` is, or is in (a function or class imported from it); None if outside."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> Iterator[tuple[int, str]]:
    """(line, project module) for each import in `module`."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from chat import turns` imports the module chat.turns; `from chat.turns import follow`, chat.turns.
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if (imported := _project_module(name)) is not None and imported != module:
                yield node.lineno, imported


GRAPH = {module: sorted({imported for _, imported in _imports(module)}) for module in MODULES}


def test_the_walk_finds_the_project_and_its_imports():
    # A walk that found nothing would pass every rule below.
    assert {"chat.turns", "engine.vllm_client", "api.rest", "ops.readings"} <= MODULES.keys()
    assert "chat.turns" in GRAPH["api.rest"]
    assert "engine.catalog" in GRAPH["chat.turns"]


def test_no_module_is_over_400_lines():
    too_long = {
        str(path.relative_to(ROOT)): count
        for path in MODULES.values()
        if (count := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not too_long, f"Split by responsibility (at most {MAX_LINES} lines each): {too_long}"


def test_chat_and_engine_import_nothing_from_api_or_ops():
    upward = [
        f"{MODULES[module].relative_to(ROOT)}:{line} imports {imported}"
        for module in MODULES
        if module.split(".")[0] in LOWER
        for line, imported in _imports(module)
        if imported.split(".")[0] in UPPER
    ]
    assert not upward, "An import from the domain up to a door or the operator's view:\n" + "\n".join(upward)


def _cycles() -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in GRAPH:
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(GRAPH[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, edges = work[-1]
            for imported in edges:
                if imported not in index:
                    index[imported] = low[imported] = len(index)
                    stack.append(imported)
                    on_stack.add(imported)
                    work.append((imported, iter(GRAPH[imported])))
                    break
                if imported in on_stack:
                    low[module] = min(low[module], index[imported])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[module])
                if low[module] == index[module]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == module:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return groups


def test_no_import_circle_among_the_projects_modules():
    assert not _cycles(), f"Modules that import each other, directly or round a circle: {_cycles()}"


@pytest.mark.parametrize(
    ("graph", "circles"),
    [
        ({"a": ["b"], "b": ["c"], "c": []}, []),
        ({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}, [["a", "b", "c"]]),
        ({"a": ["b"], "b": ["a"], "c": ["d"], "d": ["c"]}, [["a", "b"], ["c", "d"]]),
    ],
)
def test_the_circle_finder_finds_circles(monkeypatch, graph, circles):
    # The rule above passes when the finder finds nothing: it must find what there is.
    monkeypatch.setattr(f"{__name__}.GRAPH", graph)
    assert sorted(_cycles()) == circles
