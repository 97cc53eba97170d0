"""The import rules of the layout: arrows point down, no circle, no function-local import of echat.

Every ``import`` in ``echat/`` is read with ``ast`` (inside functions too, where a circle hides), and
each module is given its layer; a module may import its own layer or lower ones only.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "echat"
# Lowest first. Within a layer, imports may go either way (but never round in a circle).
LAYERS = (
    ("echat.config",),
    ("echat.audio", "echat.tokens", "echat.hub"),
    ("echat.prompts", "echat.text_tokenizer"),
    ("echat.sequence",),
    ("echat.models",),
    ("echat.data",),
    ("echat.token2wav",),
    ("echat.train", "echat.eval"),
    ("echat.workbench",),
    ("echat.app",),
    ("echat.cli", "echat.__main__", "echat"),
)
# ``echat --help`` answers before torch is imported: each subcommand imports its module when it runs.
LAZY_ALLOWED = {"echat.cli"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    """Index in LAYERS of the longest prefix that names ``module``'s room."""
    best, depth = None, -1
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and name.count(".") > depth:
                best, depth = index, name.count(".")
    assert best is not None, f"{module} has no layer in LAYERS"
    return best


def echat_imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(imported echat module, line, inside a function) of every import statement in ``tree``."""
    found = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.split(".")[0] == "echat":
                for alias in child.names:
                    sub = f"{child.module}.{alias.name}"
                    found.append((sub if sub in MODULES else child.module, child.lineno, local))
            elif isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, local) for a in child.names if a.name.split(".")[0] == "echat")
            visit(child, inner)

    visit(tree, False)
    return found


GRAPH = {name: echat_imports(ast.parse(path.read_text(encoding="utf-8"))) for name, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    upward = [f"{module}:{line} imports {target}" for target, line, _ in GRAPH[module]
              if target != module and layer(target) > layer(module)]
    assert not upward, "\n".join(upward)


def test_models_import_only_the_core_below_them():
    allowed = ("echat.config", "echat.audio", "echat.tokens", "echat.prompts", "echat.sequence",
               "echat.text_tokenizer", "echat.models")
    wrong = [f"{m}:{line} imports {t}" for m in MODULES if layer(m) == layer("echat.models")
             for t, line, _ in GRAPH[m] if not any(t == a or t.startswith(a + ".") for a in allowed)]
    assert not wrong, "\n".join(wrong)


def circles(edges: dict[str, set[str]]) -> list[str]:
    """Every module that an import path leads back to, as ``a -> b -> a``."""
    found = []
    for start in edges:
        stack, seen = [(start, (start,))], set()
        while stack:
            node, path = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == start:
                    found.append(" -> ".join((*path, start)))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*path, nxt)))
    return sorted(set(found))


def test_no_import_circle():
    edges = {m: {t for t, _, _ in GRAPH[m] if t in MODULES and t != m} for m in MODULES}
    assert not circles(edges), "\n".join(circles(edges)[:10])


def test_echat_is_imported_at_the_top_of_a_module():
    lazy = [f"{m}:{line} imports {t} inside a function" for m in MODULES if m not in LAZY_ALLOWED
            for t, line, local in GRAPH[m] if local]
    assert not lazy, "\n".join(lazy)


def test_the_rules_catch_an_upward_import_and_a_circle():
    tree = ast.parse("def f():\n    from echat.train.run import train_stage\n")
    [(target, _, local)] = echat_imports(tree)
    assert target == "echat.train.run" and local and layer(target) > layer("echat.models.echat")
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a", "b -> c -> a -> b",
                                                                         "c -> a -> b -> c"]
