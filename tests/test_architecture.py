"""Import directions of the package (README, "Architecture"): nothing imports upward, no cycles.

``errors`` <- ``config`` <- ``nn`` <- ``moe``, ``ssm`` <- ``models`` <- ``train``, ``decode``,
``export``, ``eval`` <- ``commands`` <- ``cli``; ``parallel`` sits beside ``nn`` (used by
``moe.expert_parallel``, ``models`` and ``train``); ``data`` knows no model; ``checkpoint``
knows no optimizer; private helpers of ``nn`` stay inside ``nn``. Checked statically from
every ``import`` / ``from`` statement of every module, including the ones inside functions
(relative imports resolved).
"""

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jaxmoe"
UPPER = ("train", "decode", "export", "eval", "commands", "cli", "demos")
LOWER_THAN_MODELS = ("nn", "moe", "ssm", "parallel")
# component (a subpackage or top-level module of jaxmoe) -> components it must not import
FORBIDDEN = {
    "errors": ("config", "config_legacy", "checkpoint", "data", "models", "validate") + LOWER_THAN_MODELS + UPPER,
    "config_legacy": ("config", "checkpoint", "data", "models", "validate") + LOWER_THAN_MODELS + UPPER,
    "config": ("checkpoint", "data", "models", "validate") + LOWER_THAN_MODELS + UPPER,
    "nn": ("moe", "ssm", "models", "data", "parallel", "checkpoint") + UPPER,
    "parallel": ("moe", "ssm", "models", "data", "checkpoint") + UPPER,
    "ssm": ("moe", "models", "data", "parallel", "checkpoint") + UPPER,
    "moe": ("ssm", "models", "data", "checkpoint") + UPPER,
    "models": ("data", "checkpoint") + UPPER,
    "data": ("nn", "moe", "ssm", "models", "parallel", "checkpoint") + UPPER,
    "checkpoint": UPPER,
    "validate": UPPER,
    "train": ("decode", "export", "eval", "commands", "cli", "demos"),
    "decode": ("train", "export", "eval", "commands", "cli", "demos"),
    "export": ("train", "decode", "eval", "commands", "cli", "demos"),
    "eval": ("train", "export", "commands", "cli", "demos"),
    "demos": ("commands", "cli"),
    "commands": ("cli",),
}
OPTIMIZER_MODULES = ("optax",)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "jaxmoe"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str):
    """``(line, imported module, names, runtime)`` of every import in ``module``; ``from
    pkg import name`` counts as an import of ``pkg.name`` when that is a module; ``runtime``
    is False inside ``if TYPE_CHECKING:``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node, runtime):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, runtime)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((node.lineno, alias.name, (), runtime))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = tuple(a.name for a in node.names)
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            for target in submodules or [base]:
                found.append((node.lineno, target, names, runtime))
        for child in ast.iter_child_nodes(node):
            visit(child, runtime)

    visit(ast.parse(path.read_text()), True)
    return found


IMPORTS = {m: _imports(m) for m in MODULES}


def _internal(target: str) -> str | None:
    """The jaxmoe module ``target`` names (its longest prefix that is a module), or None."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_every_component_has_rules():
    components = {_component(m) for m in MODULES} - {"jaxmoe"}
    # the entry points (cli.py, __main__.py) sit on top of everything
    assert components - set(FORBIDDEN) <= {"cli", "__main__"}, sorted(components - set(FORBIDDEN))


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_upward_imports(layer):
    bad = []
    for module in MODULES:
        if _component(module) != layer:
            continue
        for line, target, _, _ in IMPORTS[module]:
            parts = target.split(".")
            if parts[0] == "jaxmoe" and len(parts) > 1 and parts[1] in FORBIDDEN[layer]:
                bad.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_modules():
    """Every runtime import counts, lazy ones inside functions too; a module's use of its
    own package (always imported before it) and ``TYPE_CHECKING`` imports do not."""
    graph = defaultdict(set)
    for module in MODULES:
        graph[module]
        for _, target, _, runtime in IMPORTS[module]:
            target = _internal(target)
            if runtime and target and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    assert not _cycles(graph), "\n".join(" <-> ".join(c) for c in _cycles(graph))


def test_no_import_cycles_between_components():
    graph = defaultdict(set)
    for module in MODULES:
        graph[_component(module)]
        for _, target, _, runtime in IMPORTS[module]:
            target = _internal(target)
            if runtime and target and _component(target) != _component(module) and target != "jaxmoe":
                graph[_component(module)].add(_component(target))
    assert not _cycles(graph), "\n".join(" <-> ".join(c) for c in _cycles(graph))


def test_checkpoint_decode_and_export_know_no_optimizer():
    bad = [f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {target}"
           for m in MODULES if _component(m) in ("checkpoint", "decode", "export")
           for line, target, _, _ in IMPORTS[m] if target.split(".")[0] in OPTIMIZER_MODULES]
    assert not bad, "\n".join(bad)


def test_private_nn_helpers_stay_in_nn():
    bad = []
    for module, path in MODULES.items():
        if _component(module) == "nn":
            continue
        for line, target, names, _ in IMPORTS[module]:
            if target.startswith("jaxmoe.nn") and any(n.startswith("_") for n in names):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}")
        text = path.read_text()
        if "_choose_impl" in text or "attn_lib._" in text:
            bad.append(f"{path.relative_to(PACKAGE.parent)} uses a private attention helper")
    assert not bad, "\n".join(bad)


def test_the_checker_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert any(target == "jaxmoe.config" for _, target, _, _ in IMPORTS["jaxmoe.models.registry"])
