"""The package's layout: no import cycle, the model files (what ships with a checkpoint) import only each other, and
the source names none of transformers' private loading internals."""

import ast
import re
from pathlib import Path


PACKAGE = Path(__file__).resolve().parent.parent / "mpiqe_hf"
MODEL_FILES = {
    "configuration_mpiqe",
    "modeling_mpiqe",
    "image_processing_mpiqe",
    "image_utils_mpiqe",
    "pipeline_mpiqe",
    "quality_map_mpiqe",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module of the package that `path` imports, at module level or inside functions, by its full name."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            found.add(target)
            # `from . import data` / `from .pkg import module` import modules too
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES and name != module}


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _graph() -> dict[str, set[str]]:
    return {name: _imports(path) for name, path in MODULES.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` (`[a, b, ..., a]`), or None."""
    state = {}

    def visit(name, path):
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target, [*path, target])
                if cycle:
                    return cycle
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name, [name])
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = _graph()
    assert "mpiqe_hf.publishing" in graph["mpiqe_hf"] and "mpiqe_hf.modeling_mpiqe" in graph["mpiqe_hf.publishing"]
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph))
    # the walk sees a cycle where there is one, through a function-level import too
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    graph["mpiqe_hf.modeling_mpiqe"].add("mpiqe_hf.publishing")
    assert _find_cycle(graph) is not None


def test_model_files_import_only_each_other():
    for name in MODEL_FILES:
        imported = _imports(PACKAGE / f"{name}.py")
        outside = {target for target in imported if target.removeprefix("mpiqe_hf.") not in MODEL_FILES}
        assert not outside, f"{name}.py imports {sorted(outside)}, which does not ship with a checkpoint"


def test_no_private_transformers_names_in_the_source():
    private = re.compile(r"LOAD REPORT|_registered_impl|_from_auto|_commit_hash|_raise_exceptions_for_missing_entries")
    for path in [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "examples").rglob("*.py")]:
        hits = [line for line in path.read_text().splitlines() if private.search(line)]
        assert not hits, f"{path.name}: {hits}"
