"""The package layers of src/dasd (docs/architecture.md): every import of dasd, at module level or inside a
function, goes down the pipeline or stays in its package. A function-local import of dasd is kept for the
optional heavy dependencies only, private names (``_x``) are not imported across packages, and no module is
over 500 lines.

Each rule is a ratchet: the ``KNOWN_*`` sets list what the codebase still breaks. A new break fails, and so
does a listed one that is gone (remove it from the list), so the lists only shrink."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PKG = SRC / "dasd"

# Lowest first. A module may import its own layer and the layers below it. The longest matching prefix wins.
LAYERS = [
    ("dasd.utils",),
    ("dasd.text",),
    ("dasd.models", "dasd.world"),  # the world environment: generator, walk, tokenizer and model shapes
    ("dasd.data",),
    ("dasd.generation",),
    ("dasd.das",),
    ("dasd.training",),
    ("dasd.eval",),
    ("dasd.mixed",),
    ("dasd.ablation",),
    ("dasd.config", "dasd.config_schema", "dasd.config_checks"),
    ("dasd.recipes",),
    ("dasd.launch", "dasd"),
]
# Function-local imports of dasd that stay local: optional heavy dependencies, imported only when chosen.
LAZY_OK = {"dasd.generation.vllm_engine"}
MAX_LINES = 500

# What the code still breaks (source module -> imported module). These lists only shrink.
KNOWN_UPWARD = set()
KNOWN_LOCAL = set()
KNOWN_PRIVATE = set()
KNOWN_LONG = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    best, found = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, found = len(p), i
    assert found is not None, module
    return found


def package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def imports(path: Path):
    """(imported module, imported names, is function-local) for every import of dasd in ``path``."""
    tree = ast.parse(path.read_text())
    mod = module_name(path)
    is_pkg = path.name == "__init__.py"
    local = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local.update(id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "dasd":
                    yield a.name, [], id(node) in local
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            if target.split(".")[0] != "dasd":
                continue
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if (PKG.parent / f"{target}.{n}".replace(".", "/")).exists()
                          or (PKG.parent / (f"{target}.{n}".replace(".", "/") + ".py")).exists()]
            for t in submodules or [target]:
                yield t, [n for n in names if f"{target}.{n}" not in submodules], id(node) in local


def scan():
    upward, lazy, private, long = set(), set(), set(), set()
    for path in sorted(PKG.rglob("*.py")):
        mod = module_name(path)
        if len(path.read_text().splitlines()) > MAX_LINES:
            long.add(mod)
        for target, names, is_local in imports(path):
            if target == "dasd":
                target = "dasd.__init__"
            edge = f"{mod} -> {target}"
            if layer(target if target != "dasd.__init__" else "dasd") > layer(mod) and package(target) != package(mod):
                upward.add(edge)
            if is_local and target not in LAZY_OK:
                lazy.add(edge)
            if package(target) != package(mod) and any(n.startswith("_") for n in names):
                private.add(edge + " (" + ", ".join(n for n in names if n.startswith("_")) + ")")
    return upward, lazy, private, long


def _ratchet(found: set, known: set, what: str) -> None:
    new, fixed = sorted(found - known), sorted(known - found)
    assert not new, f"new {what} (docs/architecture.md):\n  " + "\n  ".join(new)
    assert not fixed, f"fixed {what}: remove from the known list in tests/test_layers.py:\n  " + "\n  ".join(fixed)


def test_imports_go_down_the_layers():
    _ratchet(scan()[0], KNOWN_UPWARD, "upward imports")


def test_no_function_local_imports_of_dasd():
    _ratchet(scan()[1], KNOWN_LOCAL, "function-local imports of dasd")


def test_no_private_names_across_packages():
    _ratchet(scan()[2], KNOWN_PRIVATE, "private names imported across packages")


def test_no_module_over_500_lines():
    _ratchet(scan()[3], KNOWN_LONG, f"modules over {MAX_LINES} lines")


def test_no_cycle_between_packages():
    """Layers order the packages; this also covers packages that share a layer (models and world; the
    config modules)."""
    edges: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        mod = module_name(path)
        for target, _, _ in imports(path):
            if target != "dasd" and package(target) != package(mod):
                edges.setdefault(package(mod), set()).add(package(target))
    done, stack = set(), []

    def visit(node: str) -> None:
        if node in stack:
            raise AssertionError("package import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in done:
            return
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            visit(nxt)
        stack.pop()
        done.add(node)

    for node in sorted(edges):
        visit(node)


def test_layer_map_covers_every_module():
    for path in PKG.rglob("*.py"):
        layer(module_name(path))


if __name__ == "__main__":
    for name, found in zip(("KNOWN_UPWARD", "KNOWN_LOCAL", "KNOWN_PRIVATE", "KNOWN_LONG"), scan(), strict=True):
        if not found:
            print(f"{name} = set()")
            continue
        print(f"{name} = {{")
        for e in sorted(found):
            print(f"    {e!r},")
        print("}")
