"""A sweep: its config expanded into cells, a plan of what runs (``plan``), then its execution into the store.

A cell is (technique, params, steps) × (device, dtype, threads, compile, batch) with the quality settings. Its spec
hash addresses its record, so a rerun skips cells already stored.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from bench import config as cfg
from bench import recipes, registry
from bench.cell import EXTENSION_AXES, IMAGE_AXES, QUALITY_INVARIANT_AXES, Cell  # noqa: F401 (re-exported)
from bench.conditioning import LABEL_RULE
from bench.errors import UserError
from bench.recipes import base_recipe
from bench.store import Store, is_stale


def needed_artifacts(config: cfg.SweepConfig, cells: list[Cell] | None = None) -> list[recipes.Recipe]:
    """Every zoo artifact a sweep of ``config`` (or just its ``cells``) uses, each once, in training order (the FID
    extractor, the base model, then each technique's artifacts as it declares them: teachers before students)."""
    base = base_recipe(config)
    m, q = config.model, config.quality
    extractor = recipes.extractor_recipe(q.extractor, m.dataset, m.resolution, q.extractor_steps)
    needed = [extractor] if extractor else []
    if base.options.get("num_classes"):  # a conditional model's class accuracy is judged by the zoo classifier
        needed.append(recipes.classifier_recipe(m.dataset, m.resolution, q.extractor_steps))
    if "autoencoder" in base.options:  # a latent model's autoencoder trains first (its artifact carries a copy)
        needed.append(recipes.Recipe.from_dict(base.options["autoencoder"]))
    needed.append(base)
    if cells is None:
        uses = [(technique, params) for entry in config.technique
                for technique in [registry.get(entry.name)] for params in expand_params(technique, entry)]
    else:
        uses = [(technique, technique.Params(**c.spec["params"]))
                for c in cells for technique in [registry.get(c.spec["technique"])]]
    for technique, params in uses:
        if recipes.model_kind(base) in technique.model_kinds:  # the others' cells are skipped, never trained for
            needed += list(technique.artifacts(params, base).values())
    return list({recipe.key: recipe for recipe in needed}.values())


def technique_params(technique: registry.Technique, values: dict[str, Any], where: str) -> Any:
    """The technique's Params from config values, or a one-line error naming the bad key."""
    fields = technique.param_fields()
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"config: unknown parameter '{where}.params.{key}' for technique {technique.name!r} "
                            f"(known: {', '.join(fields) or 'none'})")
        default = fields[key]
        ok = isinstance(value, type(default)) and not (isinstance(value, bool) and not isinstance(default, bool))
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            values[key], ok = float(value), True
        if not ok:
            raise UserError(f"config: '{where}.params.{key}' must be {type(default).__name__}, got {value!r}")
    params = technique.Params(**values)
    try:
        technique.validate(params)
    except ValueError as exc:
        raise UserError(f"config: {where}.params: {exc}") from None
    return params


def expand_params(technique: registry.Technique, entry: cfg.TechniqueConfig, where: str = "technique") -> list:
    """The technique's Params for every combination of the entry's parameter lists."""
    names = list(entry.params)
    return [technique_params(technique, dict(zip(names, combo, strict=False)), where)
            for combo in itertools.product(*(entry.params[k] for k in names))]


def hardware_points(config: cfg.SweepConfig) -> list[tuple[str, str, int, bool, int]]:
    """(device, dtype, threads, compile, batch) of every [[hardware]] grid, each point once, in config order."""
    points = [p for hw in config.hardware
              for p in itertools.product(hw.device, hw.dtype, hw.threads, hw.compile, hw.batch)]
    return list(dict.fromkeys(points))


def _conditions(config: cfg.SweepConfig, base: recipes.Recipe) -> dict[str, Any] | None:
    """How a conditional model's cells draw each image's condition (part of their address), or None."""
    if base.options.get("text"):
        from bench import text_to_image

        prompts = text_to_image.read_prompts(config.model.prompts or text_to_image.DEFAULT_PROMPTS)
        return {"kind": "text", "num_prompts": len(prompts), "prompts_sha256": text_to_image.prompts_sha256(prompts),
                "prompts": text_to_image.PROMPT_RULE}
    if classes := base.options.get("num_classes"):
        return {"kind": "class", "num_classes": classes, "labels": LABEL_RULE}
    return None


def expand(config: cfg.SweepConfig, machine: str | None = None) -> list[Cell]:
    """Every cell of the sweep, validated (unknown techniques, parameters and step counts fail here), measured on
    ``machine`` (default: this one, ``bench.machine.machine_id()``)."""
    import math

    from bench.machine import machine_id

    conditional = config.model.conditioning != "none"
    planned = len(hardware_points(config)) * sum(
        len(entry.steps) * math.prod(len(v) for v in entry.params.values())
        * (len(cfg.guidances(entry)) if conditional else 1) for entry in config.technique)
    if planned > cfg.LIMITS["cells"]:
        raise UserError(f"config: the sweep expands to {planned} cells, beyond {cfg.LIMITS['cells']}; split it into "
                        "several configs")
    machine = machine or machine_id()
    base = base_recipe(config)
    schedule = base.schedule
    model_id = {"recipe": base.name, "recipe_key": base.key}
    if config.model.pretrained:
        model_id["pretrained"] = base.options["source"]
    q = config.quality
    cells = []
    for i, entry in enumerate(config.technique):
        where = f"technique[{i}]"
        technique = registry.get(entry.name)
        for params in expand_params(technique, entry, where):
            for steps in entry.steps:
                try:
                    technique.validate_steps(params, steps, schedule)
                except ValueError as exc:
                    raise UserError(f"config: {where}.steps {steps} {exc} for technique {entry.name!r}") from None
            supported = recipes.model_kind(base) in technique.model_kinds
            extra = {k: r.key for k, r in technique.artifacts(params, base).items()} if supported else {}
            # a conditional model's cells say how labels were drawn and how they are guided (unconditional cells
            # keep the spec, and so the address, they always had)
            conditions = ([{"conditions": condition, "guidance": dataclasses.asdict(g)} for g in cfg.guidances(entry)]
                          if (condition := _conditions(config, base)) else [{}])
            for steps, condition, (device, dtype, threads, compiled, batch) in itertools.product(
                    entry.steps, conditions, hardware_points(config)):
                cells.append(Cell({
                    "technique": entry.name, "params": dataclasses.asdict(params), "steps": steps,
                    "device": device, "dtype": dtype, "threads": threads, "compile": compiled, "batch": batch,
                    "machine": machine,
                    "n_samples": entry.n_samples or q.n_samples, "seed": q.seed,
                    "dataset": config.model.dataset, "resolution": config.model.resolution,
                    "model": model_id, "artifacts": extra, "extractor": q.extractor,
                    "reference_split": q.reference_split, "reference_n": q.reference_n, "bootstrap": q.bootstrap,
                    **condition,
                }))
    return cells


@dataclass(frozen=True)
class PlannedCell:
    """One cell of a plan: what the sweep does with it and why."""

    cell: Cell
    action: str  # "run", or "keep" (its stored record stands)
    why: str  # "new", "stored (ok)", "stale: …", "failed before: …"
    existing: dict[str, Any] | None = None


@dataclass
class Plan:
    """What ``run`` will do for a config, decided before anything runs: each cell run or kept (stored, stale or
    failed, with the reason), the zoo artifacts the cells to run need (trained already, or to train), and the stored
    records new cells may reuse quality from. ``python -m bench sweep --dry-run`` prints it."""

    config: cfg.SweepConfig
    cells: list[PlannedCell]
    versions: dict[str, frozenset]  # technique → the version values its current records carry
    retry_failed: bool = False
    rerun_stale: bool = False
    artifacts: list[tuple[recipes.Recipe, bool]] = field(default_factory=list)  # (recipe, already in a zoo)
    reusable: list[dict[str, Any]] = field(default_factory=list)

    @property
    def todo(self) -> list[Cell]:
        return [p.cell for p in self.cells if p.action == "run"]

    def lines(self) -> list[str]:
        """The plan as the dry run prints it: one line per cell, then the artifacts and the totals."""
        out = [f"{n:4d}  {p.cell.spec_hash}  {p.cell.label()}  n={p.cell.spec['n_samples']}  "
               f"{p.action}: {p.why}" for n, p in enumerate(self.cells, 1)]
        to_train = [r for r, present in self.artifacts if not present]
        out.append(f"artifacts: {len(self.artifacts)} needed, {len(to_train)} to train"
                   + "".join(f"\n  train {r.folder_name} ({r.objective}, {r.steps} steps)" for r in to_train))
        out.append(f"{len(self.cells)} cells: {len(self.todo)} to run, {len(self.cells) - len(self.todo)} kept "
                   f"→ {self.config.store_path}")
        return out


def plan(config: cfg.SweepConfig, retry_failed: bool = False, rerun_stale: bool = False) -> Plan:
    """Decide, reading the store and the zoo but changing neither, what a sweep of ``config`` will run."""
    from bench import zoo

    cells = expand(config)
    store = Store(config.store_path)
    versions = registry.installed_versions({c.spec["technique"] for c in cells})
    planned = []
    for cell in cells:
        existing = store.get(cell.spec_hash) if store.root.is_dir() else None
        planned.append(_decide(cell, existing, versions, retry_failed, rerun_stale))
    todo = [p.cell for p in planned if p.action == "run"]
    artifacts = [(r, zoo.find(r) is not None) for r in needed_artifacts(config, todo)] if todo else []
    reusable = _reusable(store, versions) if todo and store.root.is_dir() else []
    return Plan(config, planned, versions, retry_failed, rerun_stale, artifacts, reusable)


def _decide(cell: Cell, existing: dict[str, Any] | None, versions: dict[str, frozenset], retry_failed: bool,
            rerun_stale: bool) -> PlannedCell:
    """Run a cell that is not stored, or that is stored failed (with ``retry_failed``) or stale (with
    ``rerun_stale``); keep every other stored record."""
    if existing is None:
        return PlannedCell(cell, "run", "new")
    stale = is_stale(existing.get("spec", {}).get("technique"), existing.get("technique_version"), versions)
    failed = existing["status"] == "failed"
    error = str(existing.get("error") or "?").splitlines()[0] if failed else ""
    why = (f"stale: recorded by version {existing.get('technique_version')} of the technique" if stale
           else f"failed before: {error}" if failed else f"stored ({existing['status']})")
    if (retry_failed and failed) or (rerun_stale and stale):
        return PlannedCell(cell, "run", why, existing)
    hint = "; --rerun-stale refreshes it" if stale else "; --retry-failed reruns it" if failed else ""
    return PlannedCell(cell, "keep", why + hint, existing)


def run(config: cfg.SweepConfig, retry_failed: bool = False, progress: bool = True,
        rerun_stale: bool = False) -> list[dict[str, Any]]:
    """Plan the sweep (``plan``), then execute it on the configured executor; returns the records of all cells
    (stored and new)."""
    return execute(plan(config, retry_failed, rerun_stale), progress)


def execute(the_plan: Plan, progress: bool = True) -> list[dict[str, Any]]:
    """Run the plan's cells to run and return the records of all its cells (kept and new).

    Only this driver writes records, one atomic file per cell, as each result arrives: killed at any moment, the store
    holds every finished cell and a rerun redoes at most the cells that were in flight. Cells are claimed just before
    they start, so two sweeps sharing a store split the work instead of duplicating it (a cell another sweep stored
    meanwhile is re-decided by the plan's rule). Every artifact the cells to run need is trained (once, under the
    zoo's lock) before the first cell starts; cells receive them by hash.
    """
    from bench import delivery, executors

    config, cells = the_plan.config, [p.cell for p in the_plan.cells]
    store = Store(config.store_path)
    store.prepare()
    executor = executors.make(config, progress)
    number = {cell.spec_hash: n for n, cell in enumerate(cells, 1)}
    records: dict[str, dict[str, Any]] = {}

    def prefix(cell: Cell) -> str:
        return f"[{number[cell.spec_hash]}/{len(cells)}] {cell.label()}"

    for p in the_plan.cells:
        if p.action == "keep":
            stale = p.why.startswith("stale")
            note = ", stale: recorded by an older version of the technique; --rerun-stale refreshes it" if stale else ""
            print(f"{prefix(p.cell)}: already stored ({p.existing['status']}{note})", flush=True)
            if not stale:  # new cells never borrow quality computed by older technique code
                executor.remember(p.cell, p.existing)
            records[p.cell.spec_hash] = p.existing
    todo = the_plan.todo

    # stored cells of the same images at fewer seeds (an earlier, smaller N: the new cells generate only the seeds
    # those lack), or measured on another machine (their quality is reused once this machine's images prove equal)
    wanted_n = {cell.extension_key: cell.spec["n_samples"] for cell in todo}
    wanted_images = {cell.images_key for cell in todo}
    for existing in the_plan.reusable:
        source = Cell(existing["spec"])
        if (source.spec["n_samples"] < wanted_n.get(source.extension_key, 0)
                or (source.images_key in wanted_images and existing.get("image_digests"))):
            executor.remember(source, existing)

    manifest = delivery.prepare([r for r, _ in the_plan.artifacts], progress) if todo else {}
    started: dict[str, float] = {}

    def claim(cell: Cell) -> bool:
        if not store.claim(cell.spec_hash):
            print(f"{prefix(cell)}: being run by another sweep on this store; skipped here", flush=True)
            return False
        decided = _decide(cell, store.get(cell.spec_hash), the_plan.versions, the_plan.retry_failed,
                          the_plan.rerun_stale)
        if decided.action != "run":  # another sweep finished it meanwhile
            store.release(cell.spec_hash)
            print(f"{prefix(cell)}: stored meanwhile by another sweep", flush=True)
            return False
        started[cell.spec_hash] = time.perf_counter()
        return True

    for cell, record in executor.run(todo, claim, manifest):
        try:
            for relative, data in record.pop(executors.FILES, {}).items():
                store.save_file(relative, data)
            store.write(record)
        finally:
            store.release(cell.spec_hash)
        records[cell.spec_hash] = record
        elapsed = time.perf_counter() - started.get(cell.spec_hash, time.perf_counter())
        print(f"{prefix(cell)}: {_outcome(record)} ({elapsed:.1f} s)", flush=True)
    return [records[c.spec_hash] for c in cells if c.spec_hash in records]


def _reusable(store: Store, versions: dict[str, frozenset]) -> list[dict[str, Any]]:
    """Stored ok records with features, recorded by the installed version of their technique."""
    import warnings

    from bench.store import read_records

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreadable records were already reported while deciding what to run
        records = read_records(store.root)
    return [r for r in records if r["status"] == "ok" and (r.get("features") or {}).get("generated")
            and "spec" in r and not is_stale(r["spec"].get("technique"), r.get("technique_version"), versions)]


def _outcome(record: dict[str, Any]) -> str:
    if record["status"] != "ok":
        return f"{record['status'].upper()}: {record.get('error') or record.get('reason')}"
    m = record["metrics"]
    quality = f"FID {m['fid']:.2f}" if m.get("fid") is not None else "no quality (random weights)"
    return (f"{quality} NFE {m['nfe']} {m['latency_per_image_ms']:.2f} ms/img"
            + (" (quality reused)" if m.get("quality_reused_from") else "")
            + (f" (extended from {m['quality_extended_from']}: {m['n_newly_generated']} new seeds)"
               if m.get("quality_extended_from") else ""))
