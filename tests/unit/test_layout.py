"""The import layout, read statically from the source (nothing is imported).

The layer package ``cryopilot`` is in rooms whose arrows point one way::

    core  <-  protocol  <-  domain  <-  adapters  <-  steps

* ``core`` imports nothing of cryopilot but ``core``; ``protocol`` only ``core`` and ``protocol``;
  ``domain`` only ``core``, ``protocol`` and ``domain``; ``adapters`` anything but ``steps``; a step
  imports no other step;
* no import cycle among cryopilot modules (function-local imports count: they only move the cycle to
  run time);
* the deployed code (the layer, ``functions/*/app.py`` and ``headnode/deliver.py``) imports none of
  ``cryopilot_sim``, ``cryopilot_ops`` or ``cryopilot_agent``, and a handler no step but its own;
* the head-node agent imports only ``cryopilot.protocol`` of cryopilot (what the head node needs);
* the operator library imports no simulation: only the CLI front-end ``cryopilot_ops.cli`` may
  (``demo``, ``local``);
* the layer imports at module level, except the imports in :data:`ALLOWED_LOCAL_IMPORTS`, each with
  its reason.

Each check is a function of an import graph; the tests at the end feed each one a small synthetic
graph that breaks its rule, so a check that silently stopped finding anything would be noticed.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Top-level packages and where their source is.
PACKAGES = {
    "cryopilot": ROOT / "layers" / "cryopilot" / "cryopilot",
    "cryopilot_ops": ROOT / "ops" / "cryopilot_ops",
    "cryopilot_sim": ROOT / "sim" / "cryopilot_sim",
    "cryopilot_agent": ROOT / "headnode" / "cryopilot_agent",
}
LAYER = "cryopilot"
#: Packages that are no part of the deployed code.
TOOLS = ("cryopilot_sim", "cryopilot_ops", "cryopilot_agent")
#: The Lambda handlers, ``functions/<name>/app.py``, are the modules ``functions.<name>.app``; the
#: head-node files' delivery function has its handler next to the files it uploads.
HANDLERS = "functions"
OTHER_HANDLERS = {"headnode.deliver": ROOT / "headnode" / "deliver.py"}
#: The operator CLI's front-end, the one module of cryopilot_ops that may import the simulation.
OPS_FRONT_END = "cryopilot_ops.cli"

#: The rooms of the layer, and the rooms each may import.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "core": frozenset({"core"}),
    "protocol": frozenset({"core", "protocol"}),
    "domain": frozenset({"core", "protocol", "domain"}),
    "adapters": frozenset({"core", "protocol", "domain", "adapters"}),
    "steps": frozenset({"core", "protocol", "domain", "adapters", "steps"}),
}

#: Function-local imports the layer may have: (importing module, imported package) → the reason.
ALLOWED_LOCAL_IMPORTS: dict[tuple[str, str], str] = {
    ("cryopilot.domain.report.png", "matplotlib"): (
        "matplotlib is in the Report function's own requirements only, not in the shared layer: the"
        " PNG renderer imports it when it draws"
    ),
    ("cryopilot.domain.manifest", "yaml"): (
        "PyYAML costs a cold start tens of milliseconds: loaded when a manifest is parsed (Validate, the"
        " operator CLI), not by the functions that import the module for its models"
    ),
    ("cryopilot.domain.clusterconfig.build", "yaml"): (
        "PyYAML costs a cold start tens of milliseconds: loaded when a configuration is rendered"
        " (the Cluster function's create, fallback and dryrun), not by its check and delete polls"
    ),
    ("cryopilot.domain.datafiles", "yaml"): (
        "the layer ships the data files' JSON twins: PyYAML is loaded only where none was built"
        " (the source tree)"
    ),
}


@dataclass(frozen=True)
class Import:
    """One arrow: ``module`` imports ``target`` (``from a import b`` is ``a.b`` when that is a module)."""

    module: str
    target: str
    line: int
    local: bool = False  # inside a function
    type_only: bool = False  # under ``if TYPE_CHECKING:``, never run

    def __str__(self) -> str:
        where = " in a function" if self.local else ""
        return f"{self.module}:{self.line} imports {self.target}{where}"


@dataclass(frozen=True)
class Violation:
    key: str  # what is wrong, without line numbers
    where: str  # the import statement(s), with line numbers

    def __str__(self) -> str:
        return f"{self.key}  [{self.where}]"


Graph = dict[str, list[Import]]  # module → the imports in it


# --- reading the source --------------------------------------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def parse_imports(module: str, source: str, *, is_package: bool, known: Iterable[str]) -> list[Import]:
    """The imports of one module, function-local and ``TYPE_CHECKING`` ones marked."""
    modules = set(known)
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def absolute(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)]
        return ".".join([*base, node.module] if node.module else base)

    def visit(node: ast.AST, local: bool, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, alias.name, node.lineno, local, type_only))
        elif isinstance(node, ast.ImportFrom):
            origin = absolute(node)
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                target = sub if sub in modules else origin
                found.append(Import(module, target, node.lineno, local, type_only))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            for child in ast.iter_child_nodes(node):
                visit(child, True, type_only)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, local, True)
            for child in node.orelse:
                visit(child, local, type_only)
        else:
            for child in ast.iter_child_nodes(node):
                visit(child, local, type_only)

    visit(ast.parse(source), False, False)
    # one arrow per target and kind (``from a import b, c`` is one arrow to ``a``), the first one
    arrows: dict[tuple[str, bool, bool], Import] = {}
    for imp in found:
        arrows.setdefault((imp.target, imp.local, imp.type_only), imp)
    return list(arrows.values())


def build_graph(sources: Mapping[str, str], packages: Iterable[str] = ()) -> Graph:
    """The import graph of ``sources`` (module name → source text; ``packages`` are ``__init__``)."""
    pkgs = set(packages)
    return {
        name: parse_imports(name, text, is_package=name in pkgs, known=sources)
        for name, text in sources.items()
    }


def tree_sources() -> tuple[dict[str, str], set[str]]:
    """Every module of the four packages and every Lambda handler, by module name."""
    sources: dict[str, str] = {}
    packages: set[str] = set()
    for top, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [top, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
                packages.add(".".join(parts))
            sources[".".join(parts)] = path.read_text(encoding="utf-8")
    for app in sorted((ROOT / HANDLERS).glob("*/app.py")):
        sources[f"{HANDLERS}.{app.parent.name}.app"] = app.read_text(encoding="utf-8")
    for name, path in OTHER_HANDLERS.items():
        sources[name] = path.read_text(encoding="utf-8")
    return sources, packages


# --- the rules -----------------------------------------------------------------------------------


def _top(name: str) -> str:
    return name.partition(".")[0]


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _room(name: str) -> str | None:
    """``cryopilot.domain.report.png`` → ``domain``; None outside the layer's rooms."""
    parts = name.split(".")
    return parts[1] if parts[0] == LAYER and len(parts) > 1 else None


def import_cycles(graph: Graph) -> list[Violation]:
    """(a) Cycles among cryopilot modules, function-local imports included (not ``TYPE_CHECKING``)."""
    edges: dict[str, dict[str, Import]] = {}
    for module, imports in graph.items():
        if _top(module) != LAYER:
            continue
        edges[module] = {}
        for imp in imports:
            if _top(imp.target) == LAYER and imp.target in graph and not imp.type_only:
                edges[module].setdefault(imp.target, imp)

    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in edges.get(node, {}):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)

    found = []
    for component in components:
        members = set(component)
        if len(component) == 1 and component[0] not in edges.get(component[0], {}):
            continue
        arrows = [
            str(imp)
            for module in component
            for target, imp in sorted(edges[module].items())
            if target in members
        ]
        found.append(Violation(f"import cycle among {', '.join(component)}", "; ".join(arrows)))
    return found


def wrong_way(graph: Graph) -> list[Violation]:
    """(b) An arrow against the rooms' order, or from a step to another step."""
    found = []
    for module, imports in graph.items():
        room = _room(module)
        if room not in MAY_IMPORT:
            continue
        for imp in imports:
            if _top(imp.target) != LAYER:
                continue
            target_room = _room(imp.target)
            if target_room not in MAY_IMPORT[room]:
                found.append(Violation(f"{room} module {module} imports {imp.target}", str(imp)))
            elif (
                room == "steps"
                and target_room == "steps"
                and len(imp.target.split(".")) > 2
                and imp.target.split(".")[2] != module.split(".")[2]
            ):
                found.append(Violation(f"step {module} imports another step, {imp.target}", str(imp)))
    return found


def deployed_imports_tools(graph: Graph) -> list[Violation]:
    """(c) The layer or a handler importing the simulation, the operator CLI or the agent; a handler
    importing a step other than its own."""
    found = []
    for module, imports in graph.items():
        handler = _top(module) == HANDLERS or module in OTHER_HANDLERS
        if _top(module) != LAYER and not handler:
            continue
        for imp in imports:
            if _top(imp.target) in TOOLS:
                found.append(Violation(f"deployed module {module} imports {imp.target}", str(imp)))
            elif handler and _in(imp.target, f"{LAYER}.steps"):
                own = f"{LAYER}.steps.{module.split('.')[1]}"  # functions.<step>.app, headnode.deliver
                if imp.target != own and not _in(imp.target, own):
                    found.append(Violation(f"handler {module} imports {imp.target}, not its step", str(imp)))
    return found


def agent_imports_layer(graph: Graph) -> list[Violation]:
    """(d) The agent importing anything of cryopilot but ``cryopilot.protocol``."""
    return [
        Violation(f"agent module {module} imports {imp.target}", str(imp))
        for module, imports in graph.items()
        if _top(module) == "cryopilot_agent"
        for imp in imports
        if _top(imp.target) == LAYER and not _in(imp.target, f"{LAYER}.protocol")
    ]


def ops_library_imports_sim(graph: Graph) -> list[Violation]:
    """(e) The operator library (cryopilot_ops but its CLI front-end) importing the simulation."""
    return [
        Violation(f"operator module {module} imports {imp.target}", str(imp))
        for module, imports in graph.items()
        if _top(module) == "cryopilot_ops" and module != OPS_FRONT_END
        for imp in imports
        if _top(imp.target) == "cryopilot_sim"
    ]


def _allowed_local(imp: Import, allowed: Mapping[tuple[str, str], str]) -> bool:
    return any(imp.module == module and _in(imp.target, target) for module, target in allowed)


def unlisted_local_imports(
    graph: Graph, allowed: Mapping[tuple[str, str], str] = ALLOWED_LOCAL_IMPORTS
) -> list[Violation]:
    """(f) A function-local import in the layer that ``allowed`` does not list."""
    return [
        Violation(f"function-local import in {module} of {imp.target}", str(imp))
        for module, imports in graph.items()
        if _top(module) == LAYER
        for imp in imports
        if imp.local and not _allowed_local(imp, allowed)
    ]


CHECKS: dict[str, Callable[[Graph], list[Violation]]] = {
    "cycles": import_cycles,
    "rooms": wrong_way,
    "deployed": deployed_imports_tools,
    "agent": agent_imports_layer,
    "ops": ops_library_imports_sim,
    "local": unlisted_local_imports,
}


# --- the tree ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree() -> Graph:
    sources, packages = tree_sources()
    return build_graph(sources, packages)


def test_the_tree_is_read() -> None:
    sources, _ = tree_sources()
    for expected in (
        "cryopilot.core.errors",
        "cryopilot.domain.report.png",
        "cryopilot.steps.report",
        "cryopilot_ops.cli",
        "cryopilot_ops.ops",
        "cryopilot_sim.demo",
        "cryopilot_agent.driver",
        "functions.report.app",
        "headnode.deliver",
    ):
        assert expected in sources


@pytest.mark.parametrize("rule", CHECKS)
def test_the_tree_keeps_the_rule(tree: Graph, rule: str) -> None:
    found = CHECKS[rule](tree)
    assert not found, f"{rule}:\n" + "\n".join(map(str, found))


def postponed_model_annotations(sources: Mapping[str, str]) -> list[str]:
    """Layer modules that define pydantic models under ``from __future__ import annotations``.

    Postponed annotations are strings that pydantic compiles and evaluates, one by one, when each
    model class is made: about a third of the cost of making a model, paid at every cold start (the
    handlers import 30 to 50 models). Without the future import, Python 3.12 evaluates them natively
    at class definition; a method returning its own class says ``Self``.
    """
    found = []
    for name, source in sources.items():
        if _top(name) != LAYER:
            continue
        module = ast.parse(source)
        postponed = any(
            isinstance(node, ast.ImportFrom)
            and node.module == "__future__"
            and any(alias.name == "annotations" for alias in node.names)
            for node in module.body
        )
        defines_models = "BaseModel" in source and any(isinstance(node, ast.ClassDef) for node in module.body)
        if postponed and defines_models:
            found.append(name)
    return found


def test_model_modules_evaluate_annotations_at_class_definition() -> None:
    sources, _ = tree_sources()
    found = postponed_model_annotations(sources)
    assert not found, "drop `from __future__ import annotations` from: " + ", ".join(found)


def test_the_postponed_annotation_check_finds_one() -> None:
    model = "from pydantic import BaseModel\n\nclass A(BaseModel):\n    x: int\n"
    sources = {
        "cryopilot.domain.a": "from __future__ import annotations\n" + model,
        "cryopilot.domain.b": model,
        "cryopilot.domain.c": "from __future__ import annotations\n\ndef f() -> None: ...\n",
        "cryopilot_sim.d": "from __future__ import annotations\n" + model,
    }
    assert postponed_model_annotations(sources) == ["cryopilot.domain.a"]


def test_every_allowed_local_import_is_still_there(tree: Graph) -> None:
    used = {
        (module, target)
        for module, target in ALLOWED_LOCAL_IMPORTS
        for imp in tree.get(module, [])
        if imp.local and _in(imp.target, target)
    }
    assert used == set(ALLOWED_LOCAL_IMPORTS)
    assert all(reason.strip() for reason in ALLOWED_LOCAL_IMPORTS.values())


# --- the checks can fail -------------------------------------------------------------------------

#: A small tree that keeps every rule, including what the rules allow.
CLEAN = {
    "cryopilot.core.a": "import re\nfrom cryopilot.core import b\n",
    "cryopilot.core.b": "import json\n",
    "cryopilot.protocol.p": "from cryopilot.core.a import X\n",
    "cryopilot.domain.d": (
        "from typing import TYPE_CHECKING\nfrom cryopilot.protocol import p\n"
        "if TYPE_CHECKING:\n    from cryopilot.domain.e import E\n"
    ),
    "cryopilot.domain.e": "from cryopilot.domain.d import D\n",
    "cryopilot.domain.report.png": "def draw():\n    from matplotlib.figure import Figure\n",
    "cryopilot.adapters.x": "from cryopilot.domain import d\nfrom cryopilot.adapters import y\n",
    "cryopilot.adapters.y": "import boto3\n",
    "cryopilot.steps.s": "from cryopilot.adapters import x\nfrom cryopilot.domain.report import png\n",
    "cryopilot.steps.t": "from cryopilot.domain.e import E\n",
    "functions.s.app": "from cryopilot.adapters.y import logger\nfrom cryopilot.steps import s\n",
    "cryopilot.steps.deliver": "from cryopilot.protocol import p\n",
    "headnode.deliver": "from cryopilot.steps import deliver\n",
    "cryopilot_agent.cli": "from cryopilot.protocol.p import P\nfrom cryopilot_agent import driver\n",
    "cryopilot_agent.driver": "from cryopilot.protocol import p\n",
    "cryopilot_ops.ops": "from cryopilot.steps import s\nfrom cryopilot.domain.d import D\n",
    "cryopilot_ops.cli": "def demo():\n    from cryopilot_sim.demo import run\n",
    "cryopilot_sim.demo": "from cryopilot.adapters import x\nfrom cryopilot_ops import ops\n",
}


def _with(**changes: str) -> dict[str, str]:
    """CLEAN with modules added or replaced (``__`` in a keyword stands for ``.``)."""
    return {**CLEAN, **{name.replace("__", "."): text for name, text in changes.items()}}


BROKEN: list[tuple[str, dict[str, str], str, str]] = [
    # (rule, tree, the offending module, the import it names)
    (
        "cycles",
        _with(cryopilot__core__b="from cryopilot.core.a import X\n"),
        "cryopilot.core.b",
        "cryopilot.core.a",
    ),
    (
        "cycles",
        _with(cryopilot__domain__d="from cryopilot.domain.e import E\n"),
        "cryopilot.domain.d",
        "cryopilot.domain.e",
    ),
    (
        "cycles",  # a function-local import closes a cycle too
        _with(cryopilot__domain__d="def f():\n    from cryopilot.domain import e\n"),
        "cryopilot.domain.d",
        "cryopilot.domain.e",
    ),
    ("cycles", _with(cryopilot__core__b="import cryopilot.core.b\n"), "cryopilot.core.b", "cryopilot.core.b"),
    (
        "rooms",
        _with(cryopilot__core__b="from cryopilot.domain import d\n"),
        "cryopilot.core.b",
        "cryopilot.domain.d",
    ),
    (
        "rooms",
        _with(cryopilot__protocol__p="from cryopilot.domain.e import E\n"),
        "cryopilot.protocol.p",
        "cryopilot.domain.e",
    ),
    (
        "rooms",
        _with(cryopilot__domain__e="def f():\n    from cryopilot.adapters.y import Y\n"),
        "cryopilot.domain.e",
        "cryopilot.adapters.y",
    ),
    (
        "rooms",
        _with(cryopilot__adapters__y="from cryopilot.steps import t\n"),
        "cryopilot.adapters.y",
        "cryopilot.steps.t",
    ),
    (
        "rooms",
        _with(cryopilot__steps__t="from cryopilot.steps.s import x\n"),
        "cryopilot.steps.t",
        "cryopilot.steps.s",
    ),
    (
        "deployed",
        _with(cryopilot__steps__t="from cryopilot_sim.demo import run\n"),
        "cryopilot.steps.t",
        "cryopilot_sim.demo",
    ),
    (
        "deployed",
        _with(cryopilot__core__b="import cryopilot_ops.ops\n"),
        "cryopilot.core.b",
        "cryopilot_ops.ops",
    ),
    (
        "deployed",
        _with(cryopilot__domain__e="from cryopilot_agent import driver\n"),
        "cryopilot.domain.e",
        "cryopilot_agent.driver",
    ),
    (
        "deployed",
        _with(functions__s__app="from cryopilot_sim import demo\n"),
        "functions.s.app",
        "cryopilot_sim.demo",
    ),
    (
        "deployed",
        _with(functions__s__app="from cryopilot.steps import t\n"),
        "functions.s.app",
        "cryopilot.steps.t",
    ),
    (
        "deployed",
        _with(headnode__deliver="from cryopilot.steps.s import x\n"),
        "headnode.deliver",
        "cryopilot.steps.s",
    ),
    (
        "agent",
        _with(cryopilot_agent__driver="from cryopilot.domain.d import D\n"),
        "cryopilot_agent.driver",
        "cryopilot.domain.d",
    ),
    (
        "agent",
        _with(cryopilot_agent__cli="def main():\n    from cryopilot.core import a\n"),
        "cryopilot_agent.cli",
        "cryopilot.core.a",
    ),
    (
        "ops",
        _with(cryopilot_ops__ops="from cryopilot_sim.demo import run\n"),
        "cryopilot_ops.ops",
        "cryopilot_sim.demo",
    ),
    (
        "ops",
        _with(cryopilot_ops__ops="def f():\n    import cryopilot_sim.demo\n"),
        "cryopilot_ops.ops",
        "cryopilot_sim.demo",
    ),
    (
        "local",
        _with(cryopilot__adapters__y="def client():\n    import boto3\n"),
        "cryopilot.adapters.y",
        "boto3",
    ),
    (
        "local",  # the allowance is for one module, not for matplotlib anywhere
        _with(cryopilot__domain__e="class C:\n    def draw(self):\n        import matplotlib.pyplot\n"),
        "cryopilot.domain.e",
        "matplotlib.pyplot",
    ),
    (
        "local",
        _with(cryopilot__steps__t="async def f():\n    from cryopilot.domain.e import E\n"),
        "cryopilot.steps.t",
        "cryopilot.domain.e",
    ),
]


@pytest.mark.parametrize("rule", CHECKS)
def test_a_tree_that_keeps_the_rules_passes_the_check(rule: str) -> None:
    assert CHECKS[rule](build_graph(CLEAN)) == []


@pytest.mark.parametrize(
    ("rule", "sources", "module", "target"),
    BROKEN,
    ids=[f"{rule}-{module}-{target}" for rule, _, module, target in BROKEN],
)
def test_each_check_fails_on_a_tree_that_breaks_its_rule(
    rule: str, sources: dict[str, str], module: str, target: str
) -> None:
    found = CHECKS[rule](build_graph(sources))
    assert found, f"{rule} found nothing"
    assert any(module in v.key and f"{module}:" in v.where and target in v.where for v in found), found


def test_every_rule_has_a_breaking_tree() -> None:
    assert {rule for rule, *_ in BROKEN} == set(CHECKS)


def test_imports_are_read_with_their_kind() -> None:
    source = """
from typing import TYPE_CHECKING
import os.path
from . import sibling
from .. import cousin
from ..other import thing
if TYPE_CHECKING:
    from cryopilot.core import a
class K:
    def m(self):
        import json
    f = lambda: __import__("x")
def outer():
    def inner():
        from cryopilot.domain.d import D
"""
    known = {"pkg.sub.sibling", "pkg.cousin", "cryopilot.core.a", "pkg.sub.mod"}
    imports = {i.target: i for i in parse_imports("pkg.sub.mod", source, is_package=False, known=known)}
    assert set(imports) == {
        "typing",
        "os.path",
        "pkg.sub.sibling",
        "pkg.cousin",
        "pkg.other",
        "cryopilot.core.a",
        "json",
        "cryopilot.domain.d",
    }
    assert imports["cryopilot.core.a"].type_only
    assert not imports["cryopilot.core.a"].local
    assert imports["json"].local
    assert imports["cryopilot.domain.d"].local
    assert not imports["os.path"].local
    package = {
        i.target for i in parse_imports("pkg.sub", "from . import sibling\n", is_package=True, known=known)
    }
    assert package == {"pkg.sub.sibling"}
