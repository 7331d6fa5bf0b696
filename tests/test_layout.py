"""The package's layering: no import cycle inside focal_plugin/, compat at the bottom."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "focal_plugin")


def _modules():
    out = {}
    for dirpath, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                name = rel[: -len(".__init__")] if rel.endswith(".__init__") else rel
                out[name] = path
    return out


def import_graph():
    """module -> set of focal_plugin modules it imports (anywhere in the file, lazily too)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        is_pkg = path.endswith("__init__.py")
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph):
    """A list of modules forming an import cycle, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle_inside_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_compat_is_the_ground_floor():
    assert import_graph()["focal_plugin.compat"] == set()


def test_the_graph_and_the_cycle_finder_work():
    graph = import_graph()
    assert "focal_plugin.compat" in graph["focal_plugin.engine"]  # lazy and top-level edges found
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# Writers that are not focal_plugin.io's, each with why: the writer itself; inside a folder that
# io.atomic_dir swaps in whole (the dataset cache); detectron2's own file API for the evaluator's
# predictions; the installer, which runs before focal_plugin is importable; a /proc control file.
OWN_WRITERS = {"focal_plugin/io.py", "focal_plugin/data/catalog.py", "focal_plugin/evaluation.py",
               "tools/install_detectron2.py", "benchmarks/_peak_memory.py"}


def _writes(path):
    """Lines of ``path`` that write a file directly: open(..., "w"/"wb"/"x"), .write_text(),
    .write_bytes(), .savefig()."""
    out = []
    for node in ast.walk(ast.parse(open(path).read())):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        modes = [*node.args[1:2], *(k.value for k in node.keywords if k.arg == "mode")]
        mode = modes[0] if modes else None
        if name == "open" and isinstance(mode, ast.Constant) and set(str(mode.value)) & {"w", "x"}:
            out.append(node.lineno)
        elif name in ("write_text", "write_bytes", "savefig"):
            out.append(node.lineno)
    return out


def test_results_are_written_through_the_one_atomic_writer():
    scripts = [os.path.join(ROOT, d, f) for d in ("tools", "benchmarks")
               for f in os.listdir(os.path.join(ROOT, d)) if f.endswith(".py")]
    found = {os.path.relpath(p, ROOT): _writes(p) for p in [*_modules().values(), *scripts]}
    bad = {p: lines for p, lines in found.items() if lines and p not in OWN_WRITERS}
    assert not bad, f"write through focal_plugin.io (atomic) instead: {bad}"
    assert _writes(os.path.join(PKG, "io.py")), "the checker finds the writer's own open()"
