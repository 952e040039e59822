"""The core modules form a layered graph: no import cycles (issue 9), whether an import sits at the top of a
module or inside a function (a function-level import hides a cycle, it does not remove it), and imports of
bakery modules sit at the top of core modules (only the CLI defers them, for start-up time)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "bakery"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module, module: str) -> list[tuple[str, int, bool]]:
    """(imported bakery module, line, at module top) for every runtime import (TYPE_CHECKING blocks skipped)."""
    out: list[tuple[str, int, bool]] = []
    package = module.rsplit(".", 1)[0] if not module.endswith("__init__") else module

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, top)
                continue
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, top) for a in child.names if a.name.startswith("bakery"))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + [base])
                if base.startswith("bakery"):
                    for alias in child.names:  # `from bakery import ledger` imports the module bakery.ledger
                        sub = f"{base}.{alias.name}"
                        out.append((sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() else base,
                                    child.lineno, top))
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            visit(child, top and not nested)

    visit(tree, True)
    return out


def _graph() -> dict[str, list[tuple[str, int, bool]]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if name.startswith("bakery.cli"):
            continue
        graph[name] = [(m, line, top) for m, line, top in _imports(ast.parse(path.read_text()), name)
                       if not m.startswith("bakery.cli") and m != name and m != "bakery"]
    return graph


def _cycles(graph: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    edges = {m: sorted({d for d, _, _ in deps if d in graph}) for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:  # Tarjan
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
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

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles_among_core_modules() -> None:
    cycles = _cycles(_graph())
    assert cycles == [], "import cycles: " + "; ".join(" ↔ ".join(c) for c in cycles)


# Measured exceptions, each explained next to the import.
DEFERRED = {("bakery.definitions", "bakery.render"),  # render imports jinja2: ~0.1 s of `bakery list`'s start-up
            # a definition's own ignore entries are validated with pydantic: the scan/promote paths otherwise run
            # on the cached configuration without it (bakery.configview; ~0.1 s of their start-up)
            ("bakery.policy", "bakery.config"),
            # the definitions (pydantic models, YAML) only where a promotion or status needs them (a scan gate's
            # per-definition policy, a bare build tag, an image that may be an AMI): `bakery promote` of an image
            # otherwise starts without pydantic (~0.1 s of its start-up; bench/promote.py)
            ("bakery.gates", "bakery.definitions"), ("bakery.store", "bakery.definitions"),
            ("bakery.ami", "bakery.definitions"),
            # a repeat scan is served from the store: the registry clients (bakery.registries → registry, ecr) only
            # where a scan goes to a registry or runs trivy, the trivy DB reader only after trivy ran (~7 ms of the
            # repeat's start-up, which must stay 20× under a cold scan; bench/scan.py)
            ("bakery.scan", "bakery.registries"), ("bakery.scan", "bakery.trivydb"),
            # a definition file's schema (pydantic models) only for a file whose validated outcome is not kept
            # (bakery.definitions._Outcomes): a fleet loaded before loads without pydantic (~0.1 s at 1,000 files)
            ("bakery.definitions", "bakery.defschema"),
            # an AMI's signed evidence (bakery.ami_evidence → evidence → signing) only where an AMI is attested,
            # gated or verified: every promotion asks bakery.ami whether REF is an AMI (~4 ms of its start-up)
            ("bakery.ami", "bakery.ami_evidence"), ("bakery.ami", "bakery.evidence"),
            # git (bakery.tools: subprocess) only when the index changed since the last clean state check: every
            # command that loads the project runs the check, most answer from a stat
            ("bakery.statecheck", "bakery.tools"),
            # signing and evidence (cryptography), AMI and Packer code only where a build signs, or bakes with
            # Packer: every container build otherwise starts ~20 ms sooner (bench/rebuild.py; test_startup.py)
            ("bakery.build", "bakery.evidence"), ("bakery.build", "bakery.ami"),
            ("bakery.build", "bakery.ami_evidence"), ("bakery.build", "bakery.packer"),
            # a promotion (issue 14, cold promotion at skopeo's pace): the scan module only where the scan gate
            # applies or a build attests; the evidence module (→ signing, attest) loads in the background while
            # the image is copied (bakery.store.RegistryStore.copy); the ECR client only for a `kind: ecr`
            # environment (~12 ms of `bakery promote`'s start-up together; bench/promote.py)
            ("bakery.gates", "bakery.scan"), ("bakery.evidence", "bakery.scan"), ("bakery.store", "bakery.evidence"),
            ("bakery.registries", "bakery.ecr"),
            # git (bakery.tools: subprocess) only where a promotion writes an annotated git tag
            ("bakery.promote", "bakery.gitrefs"),
            # the HTTP transport (http.client, ssl, email's header parser: ~10 ms) only when a client is made:
            # bakery.registry's media types and digest helpers are read by commands that never connect
            ("bakery.registry", "bakery.transport")}


def test_core_modules_import_bakery_modules_at_the_top() -> None:
    late = [f"{m}:{line} imports {dep} inside a function" for m, deps in sorted(_graph().items())
            for dep, line, top in deps if not top and (m, dep) not in DEFERRED]
    assert late == []


@pytest.mark.parametrize("cycle", [
    {"bakery.alpha": "from bakery.beta import y\n", "bakery.beta": "def f():\n    from bakery.alpha import x\n"},
    {"bakery.alpha": "import bakery.beta\n", "bakery.beta": "if X:\n    import bakery.gamma\n",
     "bakery.gamma": "class C:\n    def f(self):\n        from bakery.alpha import x\n"},
])
def test_the_cycle_finder_sees_a_cycle_hidden_in_a_function(cycle: dict[str, str]) -> None:
    graph = {name: _imports(ast.parse(src), name) for name, src in cycle.items()}
    assert _cycles(graph) == [sorted(cycle)]


# Written once over bakery.store.ArtifactStore: they reach AMI code only through the store layer.
KIND_FREE = ("bakery.cli.promote", "bakery.promote", "bakery.gates", "bakery.status", "bakery.gc", "bakery.plan")


def test_only_the_store_layer_knows_artifact_kinds() -> None:
    """No ``startswith("ami:")`` outside the AMI store; promote, gates, status, gc and plan (and the promote
    commands) import no AMI code, not even for type checking."""
    spelled = [str(p.relative_to(PACKAGE.parent)) for p in sorted(PACKAGE.rglob("*.py"))
               if p.name != "ami.py" and '"ami:' in p.read_text()]
    assert spelled == []
    importing = []
    for module in KIND_FREE:
        source = (PACKAGE.parent / (module.replace(".", "/") + ".py")).read_text()
        every = [n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name for n in every if isinstance(n, ast.Import) for a in n.names}
        names |= {f"{n.module}.{a.name}" if n.module == "bakery" else str(n.module)
                  for n in every if isinstance(n, ast.ImportFrom) for a in n.names}
        if "bakery.ami" in names:
            importing.append(module)
    assert importing == []
