"""Where cells run: in this process (``inline``), one fresh process per cell (``process``), or as Ray tasks (``ray``).

Every executor only *computes* records and hands them back; the sweep's driver alone writes them to the store, so a
record reaches the store exactly once whichever executor ran it. A cell that raises, runs out of memory, crashes its
worker or runs past the timeout comes back as a ``failed`` record with the reason. Cells get their artifacts from the
driver's manifest (``bench.delivery``) and never train. Each record says where it ran (``execution``: executor, node,
attempts).
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import signal
import socket
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import config as cfg
from bench import delivery, zoo
from bench.cell import Cell
from bench.errors import UserError
from bench.store import Store

EXECUTORS = cfg.EXECUTORS
Prior = list[tuple[Cell, dict[str, Any]]]  # stored records a worker may reuse quality from
FILES = "_files"  # {path relative to the store: bytes}: a record's files (sample grid, features) carried with it
Claim = Callable[[Cell], bool]  # called just before a cell starts: False when another sweep has it or stored it


def run_cell(runner: Any, cell: Cell) -> dict[str, Any]:
    """One cell's record from ``runner`` (a ``CellRunner``); any exception becomes a failed record."""
    try:
        return runner.run(cell)
    except UserError as exc:
        return runner.failure(cell, str(exc))
    except MemoryError as exc:
        return runner.failure(cell, f"out of memory: {exc}", traceback.format_exc())
    except Exception as exc:  # a technique that fails becomes a failed record; the sweep goes on
        message = f"{type(exc).__name__}: {exc}"
        if "out of memory" in str(exc).lower() or "can't allocate memory" in str(exc).lower():
            message = f"out of memory: {message}"
        return runner.failure(cell, message, traceback.format_exc())


def _worker_record(config: cfg.SweepConfig, cell: Cell, prior: Prior, manifest: delivery.Manifest,
                   get_ref: Callable[[Any], bytes] | None = None) -> dict[str, Any]:
    """What a fresh worker (process or Ray task, possibly on another node) computes for one cell. It writes nothing
    to the store: its files travel back in the record (``FILES``) for the driver to save; the stored files of the
    records it may reuse or extend came with them the same way. Its artifacts come through ``manifest``."""
    from bench.runner import CellRunner

    with tempfile.TemporaryDirectory(prefix="bench-cell-") as scratch:
        scratch_store = Store(scratch)
        scratch_store.prepare()
        runner = CellRunner(config, scratch_store, progress=False)
        for source_cell, record in prior:
            record = dict(record)
            for relative, data in record.pop(FILES, {}).items():
                scratch_store.save_file(relative, data)
            runner.remember(source_cell, record)
        with zoo.provided_by(delivery.Provider(manifest, get_ref)):
            record = run_cell(runner, cell)
        files = {rel: (Path(scratch) / rel).read_bytes() for rel in record_files(record)
                 if (Path(scratch) / rel).is_file()}
        if files:
            record[FILES] = files
    return record


def record_files(record: dict[str, Any]) -> list[str]:
    """The store-relative files a record names: its sample grid and its features."""
    features = record.get("features") or {}
    return [p for p in (record.get("sample_grid"), *(e.get("file") for e in features.values() if e)) if p]


def _failure(config: cfg.SweepConfig, cell: Cell, error: str) -> dict[str, Any]:
    from bench.runner import CellRunner

    return CellRunner(config, Store(config.store_path), progress=False).failure(cell, error)


def _here(executor: str) -> dict[str, Any]:
    """``execution`` of a record computed on this machine in one attempt."""
    return {"executor": executor, "attempts": 1, "nodes": [{"host": platform.node()}]}


class Inline:
    """Every cell in this process, one after another, sharing loaded models (the default)."""

    def __init__(self, config: cfg.SweepConfig, progress: bool) -> None:
        from bench.runner import CellRunner

        self.runner = CellRunner(config, Store(config.store_path), progress=progress)

    def remember(self, cell: Cell, record: dict[str, Any]) -> None:
        self.runner.remember(cell, record)

    def run(self, cells: list[Cell], claim: Claim,
            manifest: delivery.Manifest) -> Iterator[tuple[Cell, dict[str, Any]]]:
        provider = delivery.Provider(manifest)
        for cell in cells:
            if claim(cell):
                with zoo.provided_by(provider):
                    record = run_cell(self.runner, cell)
                record["execution"] = _here("inline")
                self.runner.remember(cell, record)
                yield cell, record


class _Workers:
    """Shared by the executors whose workers start fresh: they get the stored records to reuse quality from."""

    def __init__(self, config: cfg.SweepConfig) -> None:
        self.config = config
        self.prior: dict[str, list[tuple[Cell, dict[str, Any]]]] = {}  # images key → sources, as CellRunner keeps
        self.partial: dict[str, tuple[Cell, dict[str, Any]]] = {}

    def remember(self, cell: Cell, record: dict[str, Any]) -> None:
        if record.get("status") == "ok" and not (record.get("metrics") or {}).get("quality_reused_from"):
            self.prior.setdefault(cell.images_key, []).append((cell, record))
            best = self.partial.get(cell.extension_key)
            if (record.get("features") or {}).get("generated") and (
                    best is None or best[0].spec["n_samples"] < cell.spec["n_samples"]):
                self.partial[cell.extension_key] = (cell, record)

    def prior_for(self, cell: Cell) -> Prior:
        """The stored records a fresh worker may reuse (same images, on any machine: the worker checks the proof) or
        extend (fewer seeds), with their files."""
        found = list(self.prior.get(cell.images_key, []))
        partial = self.partial.get(cell.extension_key)
        if not found and partial and partial[0].spec["n_samples"] < cell.spec["n_samples"]:
            source, record = partial
            root = Path(self.config.store_path)
            found.append((source, {**record, FILES: {rel: (root / rel).read_bytes() for rel in record_files(record)
                                                     if (root / rel).is_file()}}))
        return found


def _process_main(config: cfg.SweepConfig, cell: Cell, prior: Prior, manifest: delivery.Manifest, conn: Any) -> None:
    conn.send(_worker_record(config, cell, prior, manifest))
    conn.close()


def run_in_subprocess(config: cfg.SweepConfig, cell: Cell, prior: Prior,
                      manifest: delivery.Manifest) -> dict[str, Any]:
    """One cell in a fresh process: its record, or a failed record when it times out, is killed or crashes."""
    ctx = multiprocessing.get_context("spawn")  # no fork: torch's thread pools and locks do not survive it
    timeout = config.executor.timeout_s or None
    receive, send = ctx.Pipe(duplex=False)
    # not daemonic: a cell may start processes of its own (torch.compile's compile workers)
    worker = ctx.Process(target=_process_main, args=(config, cell, prior, manifest, send))
    worker.start()
    send.close()
    record = None
    if receive.poll(timeout):
        try:
            record = receive.recv()
        except EOFError:  # the worker died without an answer
            pass
        worker.join()
    else:
        worker.kill()
        worker.join()
        return _failure(config, cell, f"timeout: the cell ran longer than executor.timeout_s = "
                                      f"{config.executor.timeout_s:g} s and was killed")
    return record if record is not None else _failure(config, cell, _death(worker.exitcode))


class Process(_Workers):
    """A fresh process per cell: clean peak-memory figures, a crash or OOM kill takes only its cell, and a timeout."""

    def run(self, cells: list[Cell], claim: Claim,
            manifest: delivery.Manifest) -> Iterator[tuple[Cell, dict[str, Any]]]:
        for cell in cells:
            if claim(cell):
                record = run_in_subprocess(self.config, cell, self.prior_for(cell), manifest)
                record["execution"] = _here("process")
                self.remember(cell, record)
                yield cell, record


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (out of memory: the kernel's OOM killer sends SIGKILL)" if -exitcode == signal.SIGKILL else ""
        return f"worker process killed by {name}{hint}"
    return f"worker process exited with code {exitcode} without a record"


def _ray_cell(config: cfg.SweepConfig, cell: Cell, prior: Prior, manifest: delivery.Manifest,
              attempts: Any) -> dict[str, Any]:
    """One cell as a Ray task: says which node this attempt runs on, then computes the record (in a subprocess it
    can kill at ``executor.timeout_s``, once the node holds the cell's artifacts)."""
    import ray

    node = {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
            "host": platform.node()}
    try:
        ray.get(attempts.start.remote(cell.spec_hash, node), timeout=30)
    except Exception:  # bookkeeping never costs a cell its result
        pass
    if not config.executor.timeout_s:
        return _worker_record(config, cell, prior, manifest, ray.get)
    try:
        delivery.Provider(manifest, ray.get).prefetch()
    except Exception as exc:
        return _failure(config, cell, f"{type(exc).__name__}: {exc}")
    return run_in_subprocess(config, cell, prior, manifest)


class _Attempts:
    """The nodes each cell's attempts started on, kept on the driver's node (a retried task's earlier attempts
    died with their node; the driver learns of them here)."""

    def __init__(self) -> None:
        self.nodes: dict[str, list[dict[str, Any]]] = {}

    def start(self, spec_hash: str, node: dict[str, Any]) -> None:
        self.nodes.setdefault(spec_hash, []).append(node)

    def of(self, spec_hash: str) -> list[dict[str, Any]]:
        return self.nodes.get(spec_hash, [])


class Ray(_Workers):
    """Cells as Ray tasks with resource requests; joins ``executor.ray_address`` or starts a local Ray.

    A task whose worker or node dies is rerun by Ray (``executor.max_retries``); only the driver writes records, so a
    rerun cannot store a cell twice. A cell no alive node can hold fails at once. Cells of the same images wait for
    one another, so none re-scores what another node is scoring.
    """

    def __init__(self, config: cfg.SweepConfig) -> None:
        super().__init__(config)
        try:
            import ray
        except ImportError:
            raise UserError("executor 'ray' needs Ray: pip install 'bench[ray]'") from None
        self.ray = ray
        ex = config.executor
        if ex.ray_address and ex.ray_address != "auto":
            _require_reachable(ex.ray_address)
        # the owner (this driver) decides retries of tasks the memory monitor killed; read when Ray starts here
        os.environ.setdefault("RAY_task_oom_retries", str(ex.max_retries if ex.retry_oom else 0))
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": ex.ray_address} if ex.ray_address else {
                "num_cpus": ex.local_cpus or None, "include_dashboard": False}
            try:
                ray.init(log_to_driver=False, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise UserError(f"cannot start or join Ray ({ex.ray_address or 'local'}): {exc}") from exc

    def options(self, cell: Cell) -> dict[str, Any]:
        """The resources a cell asks of the cluster (its threads as CPUs, one GPU for CUDA cells, the accelerator
        type) and its retries on system failures."""
        ex = self.config.executor
        options: dict[str, Any] = {"num_cpus": ex.ray_num_cpus or cell.spec["threads"],
                                   "max_retries": ex.max_retries, "retry_exceptions": False}
        if cell.spec["device"].startswith("cuda"):
            options["num_gpus"] = 1
        if ex.accelerator_type:
            options["accelerator_type"] = ex.accelerator_type
        return options

    def unplaceable(self, options: dict[str, Any], nodes: list[dict[str, float]]) -> str | None:
        """Why no alive node can ever run a task with ``options`` (None when one can)."""
        need = {"CPU": options["num_cpus"], "GPU": options.get("num_gpus", 0)}
        if options.get("accelerator_type"):
            need[f"accelerator_type:{options['accelerator_type']}"] = 0.001  # how Ray labels a node's accelerator
        need = {k: v for k, v in need.items() if v}
        if any(all(node.get(k, 0) >= v for k, v in need.items()) for node in nodes):
            return None
        offers = "; ".join(_resources({k: node.get(k, 0) for k in need}) for node in nodes) or "nothing"
        return (f"no node of the Ray cluster can run this cell: it needs {_resources(need)}, and its "
                f"{len(nodes)} alive node(s) offer {offers}")

    def run(self, cells: list[Cell], claim: Claim,
            manifest: delivery.Manifest) -> Iterator[tuple[Cell, dict[str, Any]]]:
        ray, ex = self.ray, self.config.executor
        manifest = (delivery.publish_to_location(manifest, ex.artifact_location) if ex.artifact_location
                    else delivery.publish_to_ray(manifest, ray))
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        attempts = ray.remote(num_cpus=0)(_Attempts).options(scheduling_strategy=here).remote()
        task = ray.remote(_ray_cell)
        waiting, pending, busy = list(cells), {}, set()
        while waiting or pending:
            nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")] if waiting else []  # a node may have died
            for cell in list(waiting):
                keys = {cell.images_key, cell.extension_key}
                if keys & busy:  # a cell of the same images is running: it may reuse that one's quality
                    continue
                waiting.remove(cell)
                if not claim(cell):
                    continue
                options = self.options(cell)
                missing = self.unplaceable(options, nodes)
                if missing:
                    yield cell, {**_failure(self.config, cell, missing),
                                 "execution": {"executor": "ray", "attempts": 0, "nodes": []}}
                    continue
                ref = task.options(**options).remote(self.config, cell, self.prior_for(cell), manifest, attempts)
                pending[ref], busy = cell, busy | keys
            if not pending:
                continue
            done, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(done[0])
            busy -= {cell.images_key, cell.extension_key}
            started = ray.get(attempts.of.remote(cell.spec_hash))
            try:
                record = ray.get(done[0])
            except ray.exceptions.OutOfMemoryError as exc:
                record = _failure(self.config, cell, f"out of memory: Ray's memory monitor killed the task "
                                                     f"({str(exc)[:200]})")
            except ray.exceptions.RayError as exc:
                record = _failure(self.config, cell, f"Ray task failed on all {len(started)} attempt(s) "
                                                     f"(executor.max_retries = {ex.max_retries}): "
                                                     f"{type(exc).__name__}: {str(exc)[:300]}")
            record["execution"] = {"executor": "ray", "attempts": len(started), "nodes": started}
            self.remember(cell, record)
            yield cell, record


def _resources(resources: dict[str, float]) -> str:
    """``CPU 4, GPU 1``; an accelerator label by its name."""
    return ", ".join(k if k.startswith("accelerator_type:") and v else f"{k} {v:g}"
                     for k, v in resources.items()) or "nothing"


def _require_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds with one line when nothing listens at a Ray address (Ray itself retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot reach a Ray cluster at {address!r}: {exc}") from None


def make(config: cfg.SweepConfig, progress: bool = True) -> Inline | Process | Ray:
    kind = config.executor.kind
    if kind == "inline":
        return Inline(config, progress)
    if kind == "process":
        return Process(config)
    return Ray(config)
