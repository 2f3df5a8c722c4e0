"""Behaviour fingerprints: which code a technique's results depend on, so a version is bumped exactly when it changes.

A technique declares its version (``Technique.version``, an integer); stored cells of another version are stale.
Whether a change needed a new version is decided here, from source alone (nothing is imported): the fingerprint of a
technique is the abstract syntax tree of its module and of every project module it imports, transitively (imports
inside functions too) — without docstrings, comments (not in the tree) or declarations that change no measurement
(claims, model kinds, descriptions, contract hints, the version itself). ``techniques/versions.json`` holds each
built-in technique's version with the fingerprint it was recorded at; ``tests/test_versions.py`` fails when a
fingerprint moves while the version stays, naming the technique and the modules that changed.

    python -m bench versions                 # each technique's version and whether its code matches it
    python -m bench versions --update        # record fingerprints of techniques whose version was bumped
    python -m bench versions --accept NAME   # record a changed fingerprint at the same version: the change is
                                             # proven not to change results (say how in the commit)
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

PROJECT_PACKAGES = ("bench", "techniques")
# Class attributes (and ``Class.attr = ...`` statements) that declare, not measure: changing them moves no number.
DECLARATIONS = frozenset({"claims", "model_kinds", "model_kinds_reason", "description", "contract_variants",
                          "contract_arch", "accelerates", "version"})
# Modules imported only to declare (claim records): not part of any technique's behaviour.
DECLARATION_MODULES = frozenset({"bench.claims"})
LOCK = Path("techniques") / "versions.json"


def project_root() -> Path:
    """The folder holding the ``bench`` and ``techniques`` packages (a checkout, or site-packages)."""
    import techniques

    return Path(techniques.__file__).resolve().parent.parent


def module_file(root: Path, module: str) -> Path | None:
    """The source file of a project ``module`` under ``root`` (a module file or a package's ``__init__``)."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _declares(node: ast.stmt) -> bool:
    targets = (node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign)
               else [])
    names = [t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else None for t in targets]
    return bool(names) and all(n in DECLARATIONS for n in names)


def _declaration_import(node: ast.stmt) -> bool:
    return isinstance(node, ast.ImportFrom) and node.module in DECLARATION_MODULES


def _names(nodes: list[ast.stmt]) -> set[str]:
    return {n.id for stmt in nodes for n in ast.walk(stmt) if isinstance(n, ast.Name)}


def _declaration_helpers(module: ast.Module) -> set[str]:
    """Module-level names assigned only to be read by declarations (a claim's recipe text): declarations too."""
    declarations = [s for s in module.body if _declares(s)]
    constants = {t.id: s for s in module.body if isinstance(s, ast.Assign) and not _declares(s)
                 for t in s.targets if isinstance(t, ast.Name)}
    behaviour = _names([s for s in module.body if not _declares(s) and s not in constants.values()])
    while True:  # a constant behaviour reads makes what its value reads behaviour too
        more = {n for name in behaviour & set(constants) for n in _names([constants[name].value])} - behaviour
        if not more:
            break
        behaviour |= more
    return (_names(declarations) & set(constants)) - behaviour


def _strip(tree: ast.Module) -> ast.Module:
    """Drop docstrings, declarations and declaration imports from every body, in place."""
    helpers = _declaration_helpers(tree)
    tree.body = [s for s in tree.body if not (isinstance(s, ast.Assign) and s.targets
                                              and all(isinstance(t, ast.Name) and t.id in helpers for t in s.targets))]
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        kept = [s for i, s in enumerate(body) if not (i == 0 and _is_docstring(s)) and not _declares(s)
                and not _declaration_import(s)]
        node.body = kept or [ast.Pass()]
    return tree


def normalized(source: str) -> str:
    """What of ``source`` is behaviour: its tree without docstrings, comments and declarations, as text."""
    return ast.dump(_strip(ast.parse(source)), annotate_fields=False, include_attributes=False)


def imported_modules(root: Path, module: str) -> set[str]:
    """The project modules ``module`` imports anywhere in its source (function bodies included)."""
    path = module_file(root, module)
    if path is None:
        return set()
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # ``from bench import conditioning`` imports a module; ``from bench.x import f`` the module bench.x
            subs = [f"{node.module}.{a.name}" for a in node.names if module_file(root, f"{node.module}.{a.name}")]
            names = subs if len(subs) == len(node.names) else [node.module, *subs]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PROJECT_PACKAGES and n not in DECLARATION_MODULES
                     and module_file(root, n))
    return found


def closure(root: Path, module: str) -> list[str]:
    """``module`` and every project module it reaches through imports, sorted."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imported_modules(root, name) - seen)
    return sorted(seen)


@dataclass(frozen=True)
class Fingerprint:
    """A technique's behaviour fingerprint: one hash over the normalized source of each module it depends on."""

    digest: str
    modules: dict[str, str]  # module → sha256 (12 hex) of its normalized source

    def changed(self, recorded: dict[str, str]) -> list[str]:
        names = sorted(set(self.modules) | set(recorded))
        return [n for n in names if self.modules.get(n) != recorded.get(n)]


def fingerprint(root: Path, module: str) -> Fingerprint:
    modules = {name: hashlib.sha256(normalized(module_file(root, name).read_text(encoding="utf-8")).encode())
               .hexdigest()[:12] for name in closure(root, module)}
    digest = hashlib.sha256(json.dumps(modules, sort_keys=True).encode()).hexdigest()[:16]
    return Fingerprint(digest, modules)


def declared_version(root: Path, target: str) -> int | None:
    """The integer ``version = N`` in the class body ``target`` ("module:Class") names, read from its source."""
    module, cls = target.split(":")
    path = module_file(root, module)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if path else []:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for stmt in node.body:
                targets = (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                           if isinstance(stmt, ast.AnnAssign) else [])
                value = getattr(stmt, "value", None)
                if any(isinstance(t, ast.Name) and t.id == "version" for t in targets) \
                        and isinstance(value, ast.Constant) and type(value.value) is int:
                    return value.value
    return None


def current(root: Path, targets: dict[str, str]) -> dict[str, dict]:
    """Name → {"version", "fingerprint", "modules"} for each technique ``targets`` maps to "module:Class"."""
    out = {}
    for name, target in sorted(targets.items()):
        fp = fingerprint(root, target.split(":")[0])
        out[name] = {"version": declared_version(root, target), "fingerprint": fp.digest, "modules": fp.modules}
    return out


def problems(now: dict[str, dict], recorded: dict[str, dict]) -> list[str]:
    """One line per technique whose code and declared version disagree with what the lock recorded."""
    out = []
    for name, entry in now.items():
        old = recorded.get(name)
        if not isinstance(entry["version"], int) or entry["version"] < 1:
            out.append(f"{name}: declare its version as a class attribute, an integer from 1 (version = 1)")
        elif old is None:
            out.append(f"{name}: not in {LOCK}; run `python -m bench versions --update`")
        elif entry["fingerprint"] != old["fingerprint"] and entry["version"] == old["version"]:
            changed = Fingerprint(entry["fingerprint"], entry["modules"]).changed(old["modules"])
            out.append(f"{name}: its behaviour changed ({', '.join(changed)}) but its version is still "
                       f"{entry['version']}: bump {name}'s version to {entry['version'] + 1} (its stored cells become "
                       f"stale) and run `python -m bench versions --update`; if the change provably moves no "
                       f"result, `python -m bench versions --accept {name}` instead")
        elif entry["version"] != old["version"]:
            out.append(f"{name}: version {entry['version']} is not recorded (the lock has {old['version']}); run "
                       f"`python -m bench versions --update`")
    return out


def read_lock(root: Path) -> dict[str, dict]:
    path = root / LOCK
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_lock(root: Path, now: dict[str, dict], accept: frozenset[str] = frozenset()) -> list[str]:
    """Record every technique whose version moved (or that is new, or named in ``accept``); return what still
    disagrees (a changed fingerprint at the same version, not accepted) — those are not recorded."""
    recorded = read_lock(root)
    refused = []
    for name, entry in now.items():
        old = recorded.get(name)
        moved = old is not None and entry["fingerprint"] != old["fingerprint"] and entry["version"] == old["version"]
        if moved and name not in accept:
            refused.append(name)
        elif isinstance(entry["version"], int):
            recorded[name] = entry
    path = root / LOCK
    path.write_text(json.dumps(dict(sorted(recorded.items())), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return refused
