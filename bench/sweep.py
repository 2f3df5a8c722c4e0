"""Expand a sweep config into cells and run them into the results store.

A cell is (technique, params, steps) × (device, dtype, threads, compile, batch) with the quality settings. Its spec
hash addresses its record, so a rerun skips cells already stored.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
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


def run(config: cfg.SweepConfig, retry_failed: bool = False, progress: bool = True,
        rerun_stale: bool = False) -> list[dict[str, Any]]:
    """Run every cell not yet in the store (and, if asked, those stored as failed or by an older technique version)
    on the configured executor; returns the records of all cells (stored and new).

    Only this driver writes records, one atomic file per cell, as each result arrives: killed at any moment, the store
    holds every finished cell and a rerun redoes at most the cells that were in flight. Cells are claimed just before
    they start, so two sweeps sharing a store split the work instead of duplicating it. Every artifact the cells to
    run need is trained (once, under the zoo's lock) before the first cell starts; cells receive them by hash.
    """
    from bench import delivery, executors

    cells = expand(config)
    store = Store(config.store_path)
    store.prepare()
    executor = executors.make(config, progress)
    versions = registry.installed_versions({c.spec["technique"] for c in cells})
    number = {cell.spec_hash: n for n, cell in enumerate(cells, 1)}
    records: dict[str, dict[str, Any]] = {}

    def prefix(cell: Cell) -> str:
        return f"[{number[cell.spec_hash]}/{len(cells)}] {cell.label()}"

    def wanted(existing: dict[str, Any] | None) -> bool:
        if existing is None:
            return True
        stale = is_stale(existing.get("spec", {}).get("technique"), existing.get("technique_version"), versions)
        return (retry_failed and existing["status"] == "failed") or (rerun_stale and stale)

    todo = []
    for cell in cells:
        existing = store.get(cell.spec_hash)
        if wanted(existing):
            todo.append(cell)
            continue
        stale = is_stale(cell.spec["technique"], existing.get("technique_version"), versions)
        note = ", stale: recorded by an older version of the technique; --rerun-stale refreshes it" if stale else ""
        print(f"{prefix(cell)}: already stored ({existing['status']}{note})", flush=True)
        if not stale:  # new cells never borrow quality computed by older technique code
            executor.remember(cell, existing)
        records[cell.spec_hash] = existing

    # stored cells of the same images at fewer seeds (an earlier, smaller N: the new cells generate only the seeds
    # those lack), or measured on another machine (their quality is reused once this machine's images prove equal)
    wanted_n = {cell.extension_key: cell.spec["n_samples"] for cell in todo}
    wanted_images = {cell.images_key for cell in todo}
    for existing in _reusable(store, versions) if todo else []:
        source = Cell(existing["spec"])
        if (source.spec["n_samples"] < wanted_n.get(source.extension_key, 0)
                or (source.images_key in wanted_images and existing.get("image_digests"))):
            executor.remember(source, existing)

    manifest = delivery.prepare(needed_artifacts(config, todo), progress) if todo else {}
    started: dict[str, float] = {}

    def claim(cell: Cell) -> bool:
        if not store.claim(cell.spec_hash):
            print(f"{prefix(cell)}: being run by another sweep on this store; skipped here", flush=True)
            return False
        if not wanted(store.get(cell.spec_hash)):  # another sweep finished it meanwhile
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
