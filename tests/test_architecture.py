"""The layers of ARCHITECTURE.md hold: no import points up a layer, and nothing imports itself back."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _layers() -> dict[str, int]:
    """Module prefix -> layer number, from ARCHITECTURE.md's table."""
    layers = {}
    for line in (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8").splitlines():
        row = re.match(r"\| (\d+) \| (.+?) \|", line)
        if row:
            for prefix in re.findall(r"`([\w.]+)`", row.group(2)):
                layers[prefix] = int(row.group(1))
    return layers


def _modules() -> dict[str, Path]:
    modules = {}
    for path in (ROOT / "lowmed").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The lowmed modules a module imports, anywhere in it (function bodies included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            source = ".".join([*base, node.module] if node.module else base)
            found |= {
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names
            }
    return {module for module in found if module in modules and module != name}


def _layer(module: str, layers: dict[str, int]) -> int:
    prefixes = [prefix for prefix in layers if module == prefix or module.startswith(prefix + ".")]
    assert prefixes, f"{module} is in no layer of ARCHITECTURE.md"
    return layers[max(prefixes, key=len)]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Groups of nodes that reach each other (Tarjan's strongly connected components of more than one)."""
    index, low, stack, cycles = {}, {}, [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while (member := stack.pop()) != node:
                component.add(member)
            if component:
                cycles.append(component | {node})

    for node in graph:
        if node not in index:
            visit(node)
    return cycles


def test_every_module_has_a_layer_and_no_import_points_up():
    layers = _layers()
    upward = [
        f"{module} (layer {_layer(module, layers)}) imports {target} (layer {_layer(target, layers)})"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if _layer(target, layers) > _layer(module, layers)
    ]
    assert not upward, "\n".join(upward)


def test_no_module_or_package_imports_itself_back():
    graph = _graph()
    assert not _cycles(graph)

    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(package(module), set()).update(package(t) for t in targets if package(t) != package(module))
    assert not _cycles(packages)


def test_the_check_sees_an_upward_import_and_a_cycle():
    layers = _layers()
    assert _layer("lowmed.data.loading", layers) < _layer("lowmed.training.loop", layers)
    assert _layer("lowmed.experiment.plan", layers) == 7 and _layer("lowmed.config", layers) == 0
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert _imports("lowmed.data.prepare", ROOT / "lowmed/data/prepare.py", _modules()) >= {"lowmed.errors"}
