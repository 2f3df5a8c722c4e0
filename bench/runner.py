"""Run one cell: build the technique's pipeline, count NFE and FLOPs, time it, measure memory and energy, and
compute quality on the very images the timed loop generated."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import statistics
import time
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from bench import config as cfg
from bench import machine as machines
from bench import registry, train, zoo
from bench.cell import Cell
from bench.conditioning import Guidance
from bench.errors import Unsupported, UserError
from bench.images import DIGESTED_SEEDS, image_digests, same_images, to_uint8
from bench.measure import quality, roofline
from bench.measure.energy import EnergyMeter
from bench.measure.flops import CallRecorder
from bench.measure.latency import Latency, repeat_until, timed
from bench.measure.memory import PeakMemory
from bench.measure.noise import CpuMonitor, suspect_reasons
from bench.pipelines import conditioned_pipeline, decoded_pipeline
from bench.provenance import provenance
from bench.recipes import base_recipe
from bench.sampling import generators
from bench.store import Store, load_features
from bench.technique import Pipeline
from bench.train import load_artifact

FLOPS_UNIT = "FLOPs = 2 x MACs, fvcore with an SDPA handle, batch 1"
# networks run once per image outside the denoising loop (a latent model's decode, a text model's prompt encoder):
# their calls are not NFE, their FLOPs and time are kept apart
STAGES = ("decode", "text_encoder")
LATENCY_INCLUDES = ("the sampler call: initial noise, every network evaluation (both branches of a guided step), "
                    "the scheduler's arithmetic; not model loading, not the uint8 conversion, not the metrics")
MIN_PROBE_ACROSS_MACHINES = 8  # images another machine must reproduce byte for byte before its quality is reused


def model_sources(technique: registry.Technique, params: Any, base: zoo.Recipe) -> dict[str, zoo.Recipe]:
    """What a technique's pipeline receives, by name: ``model`` (the base recipe: the zoo's, or a pretrained model's
    import) plus the artifacts the technique declares."""
    return {"model": base, **technique.artifacts(params, base)}


def load_source(source: zoo.Recipe, progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """A model and what a results row keeps about it; recipes are trained (or imported) first when no zoo holds
    them."""
    model, artifact = load_artifact(source, progress=progress)
    return model, artifact.summary()


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A cell's pipeline, ready on its device."""

    technique: registry.Technique
    kind: str  # the model kind: unconditional, class or text
    pipe: Pipeline
    artifacts: dict[str, Any]  # what the record keeps about each model the pipeline received
    setup_s: float


@dataclasses.dataclass(frozen=True)
class CostCount:
    """What one image costs, counted: network calls and the FLOPs they ran. ``recorder`` keeps counting calls (and
    holds each network's first inputs) through the timed loop."""

    recorder: CallRecorder
    full_work: Any  # a context in which every call does its full work (``Pipeline.uncached``), or a no-op
    calls_per_image: dict[str, int]
    flops_per_call: dict[str, float]
    ran_fraction: dict[str, float]  # per network whose calls may skip work: the fraction of a full call they ran
    work_per_image: dict[str, float]  # full-call equivalents per network


@dataclasses.dataclass(frozen=True)
class BatchRunner:
    """Generates the images of a list of seeds at the cell's dtype: ``run(seeds)``."""

    run: Any
    autocast: Any
    seeds: list[int]  # the cell's seeds, in order

    def __call__(self, chunk: list[int]) -> torch.Tensor:
        return self.run(chunk)


@dataclasses.dataclass(frozen=True)
class Reuse:
    """The warm-up and what its images prove: a stored cell of the same images (``source``, whose quality is
    reused, with the note saying how it was decided), or one at fewer seeds whose features this cell extends."""

    first_call_s: float
    probe: dict[str, Any]  # digests of the warm-up images
    source: dict[str, Any] | None
    note: str | None
    extend: dict[str, Any] | None


@dataclasses.dataclass(frozen=True)
class Timing:
    """The timed loop: every attempt (the last one is the cell's timing), the images it generated, the seeds it
    generated them for, the meters' readings."""

    attempts: list[dict[str, Any]]
    images: list[torch.Tensor]  # uint8 batches
    fresh: list[int]
    n_timed_images: int
    observations: dict[str, Any]
    memory: dict[str, Any]
    energy: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Quality:
    """The cell's quality metrics with where its images and features are stored."""

    metrics: dict[str, Any]
    grid: str | None
    features: dict[str, Any] | None
    digests: dict[str, Any]
    class_correct: dict[str, Any] | None


class CellRunner:
    def __init__(self, config: cfg.SweepConfig, store: Store, progress: bool = True) -> None:
        self.config, self.store, self.progress = config, store, progress
        self._models: dict[str, Any] = {}
        self._quality: dict[str, list[dict[str, Any]]] = {}  # images key → stored sources of those images
        self._partial: dict[str, dict[str, Any]] = {}  # extension key → the stored record with the most seeds
        self._extractor: quality.Extractor | None = None
        self._reference: torch.Tensor | None = None
        self._reference_entry: dict[str, Any] | None = None
        self._classifier: torch.nn.Module | None = None  # the class-accuracy judge of conditional cells
        self._classifier_name = ""

    def remember(self, cell: Cell, record: dict[str, Any]) -> None:
        """Make a stored record's quality reusable by later cells of the same images (other threads, batch or
        machine; each proves its own images equal first), and its features extendable by cells that ask for more
        seeds of the same images."""
        if record["status"] != "ok" or record["metrics"].get("quality_reused_from"):
            return
        source = {"quality": {k: record["metrics"].get(k) for k in _QUALITY_KEYS}, "spec_hash": cell.spec_hash,
                  "grid": record.get("sample_grid"), "features": record.get("features"),
                  "digests": record.get("image_digests"), "machine": cell.spec.get("machine"),
                  "class_correct": record.get("class_correct")}
        self._quality.setdefault(cell.images_key, []).append(source)
        generated = (record.get("features") or {}).get("generated")
        if generated:
            best = self._partial.get(cell.extension_key)
            if best is None or best["spec"]["n_samples"] < cell.spec["n_samples"]:
                self._partial[cell.extension_key] = record

    def _reuse_candidates(self, cell: Cell) -> list[dict[str, Any]]:
        """Stored sources of this cell's images, this machine's first."""
        here = cell.spec.get("machine")
        return sorted(self._quality.get(cell.images_key, []), key=lambda c: c["machine"] != here)

    def _extension_for(self, cell: Cell) -> dict[str, Any] | None:
        """A stored record of the same images at fewer seeds, whose features this cell extends."""
        record = self._partial.get(cell.extension_key)
        if record is None or record["spec"]["n_samples"] >= cell.spec["n_samples"]:
            return None
        return record

    def skipped(self, cell: Cell, reason: str) -> dict[str, Any]:
        return {"spec_hash": cell.spec_hash, "status": "skipped", "reason": reason, "spec": cell.spec,
                "machine": machines.machine_id(), "fingerprint": machines.fingerprint(),
                "technique_version": registry.get(cell.spec["technique"]).version,
                "provenance": provenance(cell.spec["device"])}

    def failure(self, cell: Cell, error: str, trace: str | None = None) -> dict[str, Any]:
        return {"spec_hash": cell.spec_hash, "status": "failed", "error": error, "traceback": trace,
                "spec": cell.spec, "machine": machines.machine_id(), "fingerprint": machines.fingerprint(),
                "provenance": provenance(cell.spec["device"])}

    # -- loading --------------------------------------------------------------------------------------------------
    def _load(self, technique: registry.Technique, params: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        sources = model_sources(technique, params, base_recipe(self.config))
        models, summaries = {}, {}
        for name, source in sources.items():
            key = source.key
            if key not in self._models:
                self._models[key] = load_source(source, self.progress)
            model, summary = self._models[key]
            models[name], summaries[name] = copy.deepcopy(model), summary  # cells move and compile their own copy
        return models, summaries

    def _quality_refs(self) -> tuple[quality.Extractor, torch.Tensor]:
        if self._extractor is None:
            m, q = self.config.model, self.config.quality
            self._extractor = train.resolve_extractor(q.extractor, m.dataset, m.resolution, q.extractor_steps,
                                                        self.progress)
            self._reference = quality.reference_features(m.dataset, q.reference_split, m.resolution, q.reference_n,
                                                         self._extractor)
        if self._reference_entry is None or not (self.store.root / self._reference_entry["file"]).is_file():
            m, q = self.config.model, self.config.quality
            name = quality.reference_cache_name(m.dataset, q.reference_split, m.resolution, q.reference_n,
                                                self._extractor)
            stored = self.store.features_agreeing(name, self._reference)
            if stored is not None:  # score against the store's copy, so cells of every machine pair with its cells
                self._reference_entry, self._reference = stored
            else:
                self._reference_entry = self.store.save_features(name, self._reference)
                # the stored (float16) values, which any recomputation from the store reads
                self._reference = self._reference.to(torch.float16).to(torch.float32)
        return self._extractor, self._reference

    # -- one cell -------------------------------------------------------------------------------------------------
    def run(self, cell: Cell) -> dict[str, Any]:
        s = cell.spec
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(s["threads"])
        try:
            with torch.no_grad():
                return self._run(cell)
        finally:
            torch.set_num_threads(previous_threads)

    def _run(self, cell: Cell) -> dict[str, Any]:
        """One cell, in the order its measurements depend on one another: prepare the pipeline, count what one
        image costs, warm up and prove whether a stored cell's images are these, time the batches that generate the
        images (re-measuring a disturbed timing), score them (or reuse the proven source's quality), then write the
        record."""
        s = cell.spec
        here = machines.machine_id()
        if s.get("machine") not in (None, here):
            raise UserError(f"this cell's costs are for machine {s['machine']}, but it ran on {here}: run the sweep "
                            "from a machine of the kind its workers are")
        prepared = self._prepare(cell)
        if isinstance(prepared, str):
            return self.skipped(cell, prepared)
        count = self._count(prepared.pipe, s)
        run_batch = self._batch_runner(prepared.pipe, s)
        reuse = self._warm_up_and_prove(cell, run_batch)
        timing = self._time(cell, prepared.pipe, count, run_batch, reuse)
        scored = self._score(cell, timing, reuse, here)
        return self._record(cell, prepared, count, reuse, timing, scored, here)

    def _prepare(self, cell: Cell) -> Prepared | str:
        """The cell's pipeline on its device, conditioned and decoded as its model needs; or why it is skipped."""
        s = cell.spec
        technique = registry.get(s["technique"])
        params = technique.Params(**s["params"])
        kind = s["conditions"]["kind"] if "conditions" in s else "unconditional"
        if kind not in technique.model_kinds:
            why = f": {technique.model_kinds_reason}" if technique.model_kinds_reason else ""
            return (f"{technique.name} does not support {kind} models (it supports: "
                    f"{', '.join(technique.model_kinds)}){why}")
        t0 = time.perf_counter()
        models, artifacts = self._load(technique, params)
        models = {k: m.to(s["device"]).eval() if isinstance(m, torch.nn.Module) else m for k, m in models.items()}
        try:
            pipe = technique.pipeline(params, models, s["steps"])
        except Unsupported as exc:  # the library's own reason (a block type it cannot hook, a device it lacks)
            return f"{technique.name}: {exc}"
        if kind != "unconditional":  # each image's label or prompt from its seed, the cell's guider around every call
            pipe = conditioned_pipeline(pipe, models["model"], Guidance(**s["guidance"]), self._prompts(cell))
        if getattr(models["model"], "decoder", None) is not None:  # a latent model: every image decoded, counted apart
            pipe = decoded_pipeline(pipe, models["model"].decoder)
        return Prepared(technique, kind, pipe, artifacts, time.perf_counter() - t0)

    @staticmethod
    def _count(pipe: Pipeline, s: dict[str, Any]) -> CostCount:
        """NFE and FLOPs of one image, counted on the calls that actually ran: one eager image (for a pipeline
        whose calls may skip work, FlopCounterMode also counts what each call computed, attention included under
        MATH SDPA; a cache that decides per batch is counted on the cell's first batch, since at batch 1 it decides
        otherwise)."""
        recorder = CallRecorder(pipe.networks)
        recorder.count_ran = pipe.uncached is not None
        probe_seeds = list(range(s["seed"], s["seed"] + (s["batch"] if pipe.batch_dependent else 1)))
        with sdpa_kernel(SDPBackend.MATH) if recorder.count_ran else contextlib.nullcontext():
            pipe.sample(generators(probe_seeds), None)
        recorder.count_ran = False
        calls_per_image = dict(recorder.calls)
        full_work = pipe.uncached or contextlib.nullcontext
        with full_work():
            flops_per_call = recorder.flops_per_call(pipe.flops_counted_on)
        ran_fraction = recorder.ran_fraction(pipe.uncached) if pipe.uncached is not None else {}
        # full-call equivalents: what the calls computed, in units of a full call (a cached call counts its part)
        work_per_image = {k: n * ran_fraction[k] if k in ran_fraction else n for k, n in calls_per_image.items()}
        return CostCount(recorder, full_work, calls_per_image, flops_per_call, ran_fraction, work_per_image)

    @staticmethod
    def _batch_runner(pipe: Pipeline, s: dict[str, Any]) -> BatchRunner:
        """Generate one batch of seeds as the cell asks: compiled where it says so, under its dtype's autocast."""
        if s["compile"]:
            for net in pipe.networks.values():
                for child in net.children():
                    child.compile()
        autocast = (torch.autocast(s["device"].split(":")[0], dtype=getattr(torch, s["dtype"]))
                    if s["dtype"] != "float32" else contextlib.nullcontext())

        def run_batch(chunk: list[int]) -> torch.Tensor:
            with autocast:
                return pipe.sample(generators(chunk), None)

        return BatchRunner(run_batch, autocast, list(range(s["seed"], s["seed"] + s["n_samples"])))

    def _warm_up_and_prove(self, cell: Cell, run: BatchRunner) -> Reuse:
        """The first call at the real batch and step count: warm-up (and compilation), timed apart. Its images are
        the evidence that a stored cell's images are this cell's too."""
        s = cell.spec
        first_s, warm = timed(lambda: run(run.seeds[:s["batch"]]), s["device"])
        probe = image_digests(to_uint8(warm), s["seed"])
        source, note = self._proven_source(cell, probe, run, run.seeds)
        return Reuse(first_s, probe, source, note, None if source else self._extension_for(cell))

    def _time(self, cell: Cell, pipe: Pipeline, count: CostCount, run: BatchRunner, reuse: Reuse) -> Timing:
        """The timed loop under the memory, energy and contention meters: it generates the images quality is
        computed on (only the seeds a stored record of the same images lacks, when one exists), repeated up to the
        latency minimums; then the denoiser alone at the cell's batch, on the inputs it first received. A contended
        or unstable timing is measured again; one that stays so is stored flagged."""
        s, lat = cell.spec, self.config.latency
        device, batch, recorder = s["device"], s["batch"], count.recorder
        fresh = run.seeds[reuse.extend["spec"]["n_samples"]:] if reuse.extend else run.seeds
        recorder.reset()
        if pipe.observe is not None:
            pipe.observe()  # forget the probe and warm-up runs
        batch_times, images, n_timed_images, runs = [], [], 0, 0
        with PeakMemory(device) as mem, EnergyMeter(self.config.energy_country, device.startswith("cuda")) as energy, \
                CpuMonitor() as load:
            starts = [] if reuse.source else range(0, len(fresh), batch)
            for start in tqdm(starts, desc="  generate", unit="batch", leave=False, disable=not self.progress):
                chunk = fresh[start:start + batch]
                elapsed, x = timed(lambda c=chunk: run(c), device)
                images.append(to_uint8(x))
                n_timed_images, runs = n_timed_images + len(chunk), runs + 1
                if len(chunk) == batch:  # a short last batch is not a sample of this batch size's latency
                    batch_times.append(elapsed)
            generated_times = len(batch_times)
            batch_times = repeat_until(lambda: run(run.seeds[:batch]), device, lat.min_repeats, lat.min_seconds,
                                       batch_times)
            extra_runs = len(batch_times) - generated_times
            n_timed_images, runs = n_timed_images + extra_runs * batch, runs + extra_runs
            # the denoiser alone, inside the contention meter: a disagreement between the two timings is one sign
            # of a disturbed measurement
            observations = pipe.observe() if pipe.observe is not None else {}
            calls_total = sum(count.calls_per_image.values())
            if sum(recorder.calls.values()) != calls_total * runs:
                raise RuntimeError(f"NFE differs between runs: {sum(recorder.calls.values())} calls in {runs} "
                                   f"runs, expected {calls_total} per run")
            recorder.remove()
            with count.full_work():
                denoiser_ms = self._time_networks(recorder.networks, recorder.first_inputs, batch, device,
                                                  run.autocast)
        attempts = [{"latency_batch_s": batch_times, "denoiser_call_s": denoiser_ms, "load": load.result(),
                     "reasons": suspect_reasons(batch_times, _expected_batch_s(count.work_per_image, denoiser_ms),
                                                load.result())}]
        while attempts[-1]["reasons"] and len(attempts) <= lat.remeasure:
            with CpuMonitor() as load:
                times = repeat_until(lambda: run(run.seeds[:batch]), device, lat.min_repeats, lat.min_seconds)
                with count.full_work():
                    den = self._time_networks(recorder.networks, recorder.first_inputs, batch, device, run.autocast)
            attempts.append({"latency_batch_s": times, "denoiser_call_s": den, "load": load.result(),
                             "reasons": suspect_reasons(times, _expected_batch_s(count.work_per_image, den),
                                                        load.result())})
        return Timing(attempts, images, fresh, n_timed_images, observations, mem.result(),
                      energy.result(n_timed_images))

    def _score(self, cell: Cell, timing: Timing, reuse: Reuse, here: str) -> Quality:
        """Quality on the generated images (after the stored seeds' features, when extending), or reused from a
        cell whose images this cell reproduced; none for a random-weight model (its costs alone are the result)."""
        s, images, extend = cell.spec, timing.images, reuse.extend
        kind = s["conditions"]["kind"] if "conditions" in s else "unconditional"
        if reason := self._random_weights():
            q = {"quality_skipped": reason, "n_generated": timing.n_timed_images, "quality_reused_from": None,
                 **self._clip_score(cell, images)}
            grid = self.store.save_samples(cell.spec_hash, torch.cat(images)) if images else None
            digests = image_digests(torch.cat(images)[:DIGESTED_SEEDS], s["seed"]) if images else reuse.probe
            return Quality(q, grid, None, digests, None)
        if source := reuse.source:
            q = {**source["quality"], "quality_reused_from": source["spec_hash"], "quality_note": reuse.note}
            return Quality(q, source["grid"], source["features"], reuse.probe, source.get("class_correct"))
        extractor, reference = self._quality_refs()
        generated = torch.cat(images) if images else torch.zeros(0, 0)
        gen = quality.image_features(generated, extractor) if images else torch.zeros(0, 0)
        if extend:
            stored = torch.from_numpy(load_features(self.store.root, extend["features"]["generated"]))
            gen = torch.cat([stored, gen]) if len(gen) else stored
            digests = extend.get("image_digests")
        else:
            digests = image_digests(generated[:DIGESTED_SEEDS], s["seed"])
        q = quality.compute_from_features(gen, reference, s["bootstrap"], s["seed"])
        q.update(extractor=extractor.name, extractor_sha256=extractor.weights_sha256,
                 extractor_description=extractor.description, quality_reused_from=None,
                 quality_extended_from=extend["spec_hash"] if extend else None, n_newly_generated=len(timing.fresh))
        correct = None
        if kind == "text":
            q.update(self._clip_score(cell, images))
        if kind == "class":
            bits = self._class_correct(generated, timing.fresh) if images else ""
            stored_bits = ((extend or {}).get("class_correct") or {}).get("bits", "")
            correct = {"seeds": [s["seed"], s["seed"] + len(stored_bits) + len(bits)],
                       "bits": stored_bits + bits, "classifier": self._classifier_name}
            q.update(class_accuracy_metrics(correct["bits"]))
        features = {"generated": {**self.store.save_features(cell.spec_hash, gen),
                                  "seeds": [s["seed"], s["seed"] + len(gen)]},
                    "reference": self._reference_entry}
        if extend:  # the grid shows the first seeds, which the stored record generated
            grid = f"samples/{cell.spec_hash}.png"
            self.store.save_file(grid, (self.store.root / extend["sample_grid"]).read_bytes())
        else:
            grid = self.store.save_samples(cell.spec_hash, generated)
        self._quality.setdefault(cell.images_key, []).append(
            {"quality": {k: q.get(k) for k in _QUALITY_KEYS}, "spec_hash": cell.spec_hash, "grid": grid,
             "features": features, "digests": digests, "machine": here, "class_correct": correct})
        return Quality(q, grid, features, digests, correct)

    def _record(self, cell: Cell, prepared: Prepared, count: CostCount, reuse: Reuse, timing: Timing,
                scored: Quality, here: str) -> dict[str, Any]:
        """The ok record: the counted costs per image, the final timing with the attempts before it, quality and
        provenance."""
        s, pipe, batch, final = cell.spec, prepared.pipe, cell.spec["batch"], timing.attempts[-1]
        batch_times, denoiser_ms = final["latency_batch_s"], final["denoiser_call_s"]
        calls, per_call, work = count.calls_per_image, count.flops_per_call, count.work_per_image
        latency = Latency.from_values(batch_times)
        main = "model" if "model" in denoiser_ms else next(iter(denoiser_ms))
        den = Latency.from_values(denoiser_ms[main])
        flops_per_image = sum(work[k] * per_call[k] for k in calls)
        by_stage = {"denoiser": sum(work[k] * per_call[k] for k in calls if k not in STAGES),
                    **{k: work[k] * per_call[k] for k in STAGES if k in calls}}
        cache_metrics = {} if not count.ran_fraction else {
            "flops_ran_fraction_by_network": count.ran_fraction,
            "flops_per_image_uncached": sum(calls[k] * per_call[k] for k in calls)}
        stage_ms = {f"{k}_ms_per_image": statistics.median(denoiser_ms[k]) / batch * 1e3
                    for k in STAGES if k in denoiser_ms}
        expected = _expected_batch_s(work, denoiser_ms)
        ceilings = roofline.peak(here, s["device"], s["dtype"], s["threads"])  # cached per machine after the first
        metrics = {
            "params_total": sum(p.numel() for n in pipe.networks.values() for p in n.parameters()),
            "nfe": sum(n for name, n in calls.items() if name not in STAGES), "nfe_by_network": calls,
            "flops_per_call": per_call.get(main), "flops_per_call_by_network": per_call,
            "flops_per_image": flops_per_image, "flops_per_image_by_stage": by_stage, **stage_ms,
            "flops_unit": FLOPS_UNIT, **cache_metrics,
            # the measurement boundary (as PyTorch's diffusion benchmark states its own): what the timed call ran
            "latency_includes": LATENCY_INCLUDES + ("; the VAE decode of every image" if "decode" in calls
                                                    else "; no decode (a pixel-space model)"),
            "setup_s": prepared.setup_s, "first_call_s": reuse.first_call_s,
            "latency_per_image_ms": latency.median_s / batch * 1e3,
            "latency_per_image_mad_ms": latency.mad_s / batch * 1e3,
            "latency_batch_median_s": latency.median_s, "latency_batch_mad_s": latency.mad_s,
            "latency_count": latency.count,
            "denoiser_call_median_ms": den.median_s * 1e3, "denoiser_call_mad_ms": den.mad_s * 1e3,
            "denoiser_call_count": den.count,
            "sampler_over_denoiser": latency.median_s / expected if expected else None,
            "latency_suspect": "; ".join(final["reasons"]) or None, "latency_attempts": len(timing.attempts),
            "others_cpu_cores": final["load"].get("others_cpu_cores"),
            "steal_fraction": final["load"].get("steal_fraction"), "loadavg_1m": final["load"].get("loadavg_1m"),
            **roofline.achieved(flops_per_image, latency.median_s / batch, ceilings),
            "torch_threads": torch.get_num_threads(),
            "timed_images": timing.n_timed_images,
            **timing.memory, **timing.energy, **scored.metrics,
        }
        correct = scored.class_correct
        return {"spec_hash": cell.spec_hash, "status": "ok", "spec": s, "metrics": metrics,
                "raw": {"latency_batch_s": batch_times, "denoiser_call_s": denoiser_ms,
                        "latency_attempts": timing.attempts[:-1]},
                "info": {**pipe.info, **({"batch_dependent": pipe.batch_dependent} if pipe.batch_dependent else {})},
                "observations": timing.observations, "artifacts": prepared.artifacts, "features": scored.features,
                "image_digests": scored.digests, "machine": here, "fingerprint": machines.fingerprint(),
                "roofline": ceilings, "technique_version": prepared.technique.version, "sample_grid": scored.grid,
                "provenance": provenance(s["device"]), **({"class_correct": correct} if correct else {})}

    def _prompts(self, cell: Cell) -> list[str] | None:
        """A text model's prompts (model.prompts), proven to be those the cell's spec names."""
        wanted = cell.spec.get("conditions", {})
        if wanted.get("kind") != "text":
            return None
        from bench import text_to_image

        prompts = text_to_image.read_prompts(self.config.model.prompts or text_to_image.DEFAULT_PROMPTS)
        if text_to_image.prompts_sha256(prompts) != wanted["prompts_sha256"]:
            raise UserError(f"model.prompts changed since this cell was planned (sha256 "
                            f"{text_to_image.prompts_sha256(prompts)[:12]}, cell {wanted['prompts_sha256'][:12]})")
        return prompts

    def _random_weights(self) -> str | None:
        """Why this sweep's base model computes no quality (a random-weight pipeline), or None."""
        return base_recipe(self.config).options.get("random_weights")

    def _clip_score(self, cell: Cell, images: list[torch.Tensor]) -> dict[str, Any]:
        """CLIP score of a text cell's images against their prompts (quality.clip_model), or why there is none."""
        from bench import text_to_image

        prompts = self._prompts(cell)
        if prompts is None:
            return {}
        source = self.config.quality.clip_model
        if not source:
            return {"clip_score": None, "clip_score_skipped": "quality.clip_model is empty"}
        if not images:
            return {"clip_score": None, "clip_score_skipped": "no images generated"}
        generated = torch.cat(images)
        seeds = range(cell.spec["seed"], cell.spec["seed"] + len(generated))
        return text_to_image.clip_score(generated, text_to_image.prompts_for_seeds(seeds, prompts), source)

    def _class_correct(self, images: torch.Tensor, seeds: list[int]) -> str:
        """'1' per image the offline classifier assigns the class its seed asked for, else '0'."""
        from bench import recipes
        from bench.conditioning import labels_for_seeds

        if self._classifier is None:
            m, q = self.config.model, self.config.quality
            recipe = recipes.classifier_recipe(m.dataset, m.resolution, q.extractor_steps)
            self._classifier, summary = load_source(recipe, self.progress)
            self._classifier_name = f"{recipe.name} ({summary.get('weights_sha256', '')[:12]})"
        logits = torch.cat([self._classifier(chunk.float() / 127.5 - 1.0) for chunk in images.split(500)])
        wanted = labels_for_seeds(seeds, logits.shape[1])
        return "".join("1" if ok else "0" for ok in (logits.argmax(1) == wanted).tolist())

    def _proven_source(self, cell: Cell, probe: dict[str, Any], run_batch: Any,
                       seeds: list[int]) -> tuple[dict[str, Any] | None, str | None]:
        """A stored source of this cell's images whose digests the probe reproduces (another machine's only on
        at least ``MIN_PROBE_ACROSS_MACHINES`` images), and the note saying how it was decided."""
        here = cell.spec.get("machine")
        wider = None  # the longer probe another machine's source needs, generated once
        for source in self._reuse_candidates(cell):
            across = source["machine"] != here
            evidence = probe
            if across and probe["seeds"][1] - probe["seeds"][0] < MIN_PROBE_ACROSS_MACHINES:
                if wider is None:
                    extra = seeds[:MIN_PROBE_ACROSS_MACHINES]
                    wider = image_digests(to_uint8(run_batch(extra)), extra[0])
                evidence = wider
            matched = same_images(source["digests"], evidence)
            if matched and (not across or matched >= MIN_PROBE_ACROSS_MACHINES):
                where = f" on machine {source['machine']}" if across else ""
                return source, (f"same images: seeds {evidence['seeds'][0]}–{evidence['seeds'][0] + matched - 1} "
                                f"regenerated here are byte-identical (uint8) to those of {source['spec_hash']}"
                                f"{where}; quality reused")
        return None, None

    def _time_networks(self, networks, first_inputs, batch, device, autocast) -> dict[str, list[float]]:
        out = {}
        reps = self.config.latency.denoiser_repeats
        for name, args in first_inputs.items():
            batched = tuple(a.expand(batch, *a.shape[1:]).contiguous() if torch.is_tensor(a) and a.ndim > 0 else a
                            for a in args)

            def call(net=networks[name], inputs=batched):
                with autocast:
                    return net(*inputs)

            timed(call, device)  # warm
            out[name] = repeat_until(call, device, reps, 0.0)
        return out


def _expected_batch_s(calls_per_image: dict[str, int], denoiser_s: dict[str, list[float]]) -> float | None:
    """What a sampler batch should cost from its network calls alone: Σ calls × the network's median time."""
    if not all(k in denoiser_s for k in calls_per_image):
        return None
    return sum(n * statistics.median(denoiser_s[k]) for k, n in calls_per_image.items()) or None


def class_accuracy_metrics(bits: str) -> dict[str, float | int]:
    """The fraction of images of the requested class, with Wilson's 95% interval."""
    from bench import stats

    hits, n = bits.count("1"), len(bits)
    low, high = stats.proportion_interval(hits, n)
    return {"class_accuracy": hits / n if n else float("nan"), "class_accuracy_ci_low": low,
            "class_accuracy_ci_high": high}


_QUALITY_KEYS = ("fid", "fid_ci_low", "fid_ci_high", "fid_bootstrap_se", "kid", "kid_std", "precision", "recall",
                 "n_generated", "n_reference", "extractor", "extractor_sha256", "extractor_description", "fid_inf",
                 "fid_inf_slope", "fid_inf_r2", "fid_inf_n", "fid_inf_values",
                 "class_accuracy", "class_accuracy_ci_low", "class_accuracy_ci_high")
