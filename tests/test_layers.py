"""The package's architecture as a contract (docs/ARCHITECTURE.md, "Layers"): the import graph of `nq_dagster`
has
no cycle, counting imports inside functions (a cycle hidden there is still a cycle); each layer imports only
the
layers below it; only the settings module reads the environment; and the bottom of the stack
(`nq_dagster.store`,
`nq query`) starts without Dagster or torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "nq_dagster"

# lowest first; a module may import its own layer and the layers before it, never a later one
LAYERS: list[tuple[str, set[str]]] = [
    ("leaves", {"settings", "config"}),
    ("store", {"store"}),
    ("engines", {"neuromorphic", "quantum", "fusion"}),
    ("codecs", {"codecs"}),
    ("validation", {"validation"}),
    ("ingest", {"ingest", "demo"}),
    ("streams", {"streams"}),
    ("serve", {"serve", "client"}),  # the client shares the answers' models (serve.http.schemas)
    ("dagster", {"resources", "assets", "deployment", "jobs", "sensors"}),
    ("assembly", {"definitions", "runner", "progress", "k8s_jobs", "cli"}),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (annotations only, never executed)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {id(n) for b in node.body for n in ast.walk(b)}
    return out


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every `nq_dagster` module `path` imports, at any depth of the file (functions included): `from a import
    b` names the module `a.b` when it is one, else `a`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = type_checking_nodes(tree)
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("nq_dagster")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.startswith("nq_dagster"):
                out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    g = {}
    for name, path in modules.items():
        targets = {t if t in modules else t.rsplit(".", 1)[0] for t in imports_of(path, set(modules))}
        g[name] = {t for t in targets if t in modules and t != name}
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for i, (_, names) in enumerate(LAYERS):
        if top in names:
            return i
    return -1


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, f"import cycles: {found}"


def test_every_module_has_a_layer_and_imports_downward():
    g = graph()
    unplaced = sorted(m for m in g if m != "nq_dagster" and layer_of(m) < 0)
    assert not unplaced, f"modules in no layer of tests/test_layers.py: {unplaced}"
    upward = sorted(
        f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})"
        for a in g
        for b in g[a]
        if a != "nq_dagster" and b != "nq_dagster" and layer_of(b) > layer_of(a)
    )
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_only_settings_reads_the_environment():
    readers = sorted(
        str(p.relative_to(PKG.parent))
        for p in PKG.rglob("*.py")
        if p.name != "settings.py"
        and ("os.environ" in p.read_text(encoding="utf-8") or "getenv(" in p.read_text(encoding="utf-8"))
    )
    assert readers == [], f"modules reading the environment outside nq_dagster/settings.py: {readers}"


def test_store_and_query_start_without_dagster_or_torch(tmp_path):
    code = (
        "import sys, nq_dagster.store; from nq_dagster.cli import main; main(['--home', sys.argv[1], "
        "'query', "
        "'select 1 as one']); heavy = sorted({m.split('.')[0] for m in sys.modules} & {'dagster', 'torch'}); "
        "print('HEAVY', heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "nq")], capture_output=True, text=True, check=True
    )
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_docs_list_every_setting_and_config_key():
    """docs/configuration.md carries the generated tables of environment settings and config.json keys."""
    from nq_dagster.config import config_table
    from nq_dagster.settings import settings_table

    page = (PKG.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert settings_table() in page, "docs/configuration.md's settings table differs from settings_table()"
    assert config_table() in page, "docs/configuration.md's config table differs from config_table()"


def test_docs_cite_no_file_outside_the_repository():
    """Every relative link of README.md and docs/*.md resolves inside the repository (DESIGN.md once lived
    outside it)."""
    import re

    root = PKG.parent
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)\)", page.read_text(encoding="utf-8")):
            path = (page.parent / target).resolve()
            assert path.is_relative_to(root.resolve()) and path.exists(), f"{page.name} links {target}"
