"""The import graph is the architecture: zoo <- eval <- training, no cycles, no private names across modules.

The graph is read from the source with ``ast`` (nothing is imported or executed): every ``import`` and
``from ... import`` anywhere in a module, at the top or inside a function, is an edge. Rules:

* layers: zoo imports nothing of ours above it; eval imports zoo only; training imports eval and zoo;
  hubconf.py, the torch.hub shell, imports zoo only;
* no cycle among our modules (a function-level import counts: it is a cycle postponed, not removed);
* no private name (``_x``) taken from another module: neither ``from m import _x`` nor ``m._x`` on an
  imported module; a private module (``pkg/_m.py``) may be imported from inside ``pkg`` only.
"""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"zoo": 0, "eval": 1, "training": 2}
TOP_LEVEL = {"hubconf": "zoo"}  # top-level modules and the highest layer each may import


def module_files(root: Path) -> dict[str, Path]:
    mods = {}
    for pkg in LAYERS:
        for p in sorted((root / pkg).rglob("*.py")):
            parts = list(p.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = p
    for name in TOP_LEVEL:
        if (root / f"{name}.py").is_file():
            mods[name] = root / f"{name}.py"
    return mods


def _owner(name: str, mods) -> str | None:
    """The module of ours that ``name`` (dotted) lives in, or None for a third-party name."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def import_graph(root: Path):
    """``(edges, problems)``: edges {module: {(imported module, line)}}; private-name problems as text."""
    mods = module_files(root)
    packages = {m for m, p in mods.items() if p.name == "__init__.py"}
    edges: dict[str, set] = {m: set() for m in mods}
    problems = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        module_aliases = {}  # local name -> our module it is bound to
        for node in ast.walk(tree):
            targets = []  # (our module, imported name or None, local name, line)
            if isinstance(node, ast.Import):
                for a in node.names:
                    owner = _owner(a.name, mods)
                    if owner:
                        local = a.asname or a.name.split(".")[0]
                        targets.append((owner, None, local if a.asname else None, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = mod.split(".") if mod in packages else mod.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                for a in node.names:
                    full = f"{base}.{a.name}"
                    if full in mods:  # a module imported by name
                        targets.append((full, None, a.asname or a.name, node.lineno))
                    elif _owner(base, mods):
                        targets.append((_owner(base, mods), a.name, None, node.lineno))
            for owner, name, local, line in targets:
                if owner != mod:
                    edges[mod].add((owner, line))
                if name and _is_private(name) and owner != mod:
                    problems.append(f"{mod}:{line} imports private name {name} from {owner}")
                private_mod = next((p for p in owner.split(".") if _is_private(p)), None)
                if private_mod and not mod.startswith(owner.rpartition(".")[0] + "."):
                    problems.append(f"{mod}:{line} imports private module {owner} from outside its package")
                if local and name is None:
                    module_aliases[local] = owner
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in module_aliases and _is_private(node.attr)
                    and module_aliases[node.value.id] != mod):
                problems.append(f"{mod}:{node.lineno} reaches private name {node.attr} of "
                                f"{module_aliases[node.value.id]}")
    return edges, problems


def layer_problems(edges) -> list[str]:
    out = []
    for mod, targets in edges.items():
        top = mod.split(".")[0]
        limit = LAYERS[TOP_LEVEL[top]] if top in TOP_LEVEL else LAYERS[top]
        for target, line in sorted(targets):
            t = target.split(".")[0]
            if t in TOP_LEVEL or LAYERS[t] > limit:
                out.append(f"{mod}:{line} imports {target}: {top} may not import {t} (zoo <- eval <- training)")
    return out


def cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    graph = {m: sorted({t for t, _ in ts}) for m, ts in edges.items()}
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph.get(w, ()))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def check(root: Path) -> list[str]:
    edges, problems = import_graph(root)
    return problems + layer_problems(edges) + [f"import cycle: {' <-> '.join(c)}" for c in cycles(edges)]


def client_private_uses(root: Path, folders=("tests", "benchmarks")) -> list[str]:
    """Tests and benchmarks use our packages as any caller does: no ``from m import _x`` and no ``m._x``
    on a module of ours (they may import anything from any layer)."""
    mods = module_files(root)
    out = []
    for folder in folders:
        for path in sorted((root / folder).glob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            aliases = {}
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and _owner(node.module, mods):
                    for a in node.names:
                        if f"{node.module}.{a.name}" in mods:
                            aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                        elif _is_private(a.name):
                            out.append(f"{folder}/{path.name}:{node.lineno} imports private name {a.name} from "
                                       f"{node.module}")
                elif isinstance(node, ast.Import):
                    for a in node.names:
                        if a.asname and _owner(a.name, mods):
                            aliases[a.asname] = a.name
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                        and node.value.id in aliases and _is_private(node.attr)):
                    out.append(f"{folder}/{path.name}:{node.lineno} reaches private name {node.attr} of "
                               f"{aliases[node.value.id]}")
    return out


def test_the_import_graph_is_the_architecture():
    problems = check(ROOT)
    assert not problems, "\n" + "\n".join(problems)


def test_tests_and_benchmarks_use_public_names_only():
    problems = client_private_uses(ROOT)
    assert not problems, "\n" + "\n".join(problems)


def test_the_client_check_bites(tmp_path):
    root = _tree(tmp_path, {"zoo/a.py": "", "tests/test_x.py": "from zoo.a import _h\nfrom zoo import a\na._k\n"})
    assert client_private_uses(root) == ["tests/test_x.py:1 imports private name _h from zoo.a",
                                         "tests/test_x.py:3 reaches private name _k of zoo.a"]


def _tree(tmp_path, files: dict) -> Path:
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    for pkg in LAYERS:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return tmp_path


def test_the_checker_catches_what_it_forbids(tmp_path):
    """The rules bite: a function-level cycle, upward imports, private names and private modules."""
    root = _tree(tmp_path, {
        "zoo/a.py": "def f():\n    from .b import g\n",
        "zoo/b.py": "from zoo import a\n",
        "zoo/c.py": "from eval import run\n",
        "eval/run.py": "from zoo.a import _helper\nimport zoo.b as zb\nx = zb._secret\n",
        "eval/_impl.py": "",
        "training/t.py": "from eval import _impl\nfrom eval.run import x\n",
        "hubconf.py": "import training.t\n",
    })
    found = "\n".join(check(root))
    assert "import cycle: zoo.a <-> zoo.b" in found
    assert "zoo.c:1 imports eval.run: zoo may not import eval" in found
    assert "hubconf:1 imports training.t: hubconf may not import training" in found
    assert "eval.run:1 imports private name _helper from zoo.a" in found
    assert "eval.run:3 reaches private name _secret of zoo.b" in found
    assert "training.t:1 imports private module eval._impl from outside its package" in found
    assert "training.t:2" not in found  # a public name of a lower layer is fine


def test_a_clean_tree_passes(tmp_path):
    root = _tree(tmp_path, {
        "zoo/base.py": "import os\n",
        "zoo/_kernel.py": "",
        "zoo/hub.py": "from .base import os\nfrom . import _kernel\n",
        "eval/run.py": "from zoo.hub import os\n",
        "training/cli.py": "from eval.run import os\nfrom zoo import base\n",
        "hubconf.py": "from zoo.hub import os\n",
    })
    assert check(root) == []
