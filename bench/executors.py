"""Where cells run: in this process (``inline``), one fresh process per cell (``process``), or as Ray tasks (``ray``).

Every executor only *computes* records and hands them back; the sweep's driver alone writes them to the store, so a
record reaches the store exactly once whichever executor ran it. A cell that raises, runs out of memory, crashes its
worker or runs past the timeout comes back as a ``failed`` record with the reason.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import config as cfg
from bench.errors import UserError
from bench.store import Store
from bench.sweep import Cell

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


def _worker_record(config: cfg.SweepConfig, cell: Cell, prior: Prior) -> dict[str, Any]:
    """What a fresh worker (process or Ray task, possibly on another node) computes for one cell. It writes nothing
    to the store: its files travel back in the record (``FILES``) for the driver to save; the stored files of the
    records it may reuse or extend came with them the same way."""
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


class Inline:
    """Every cell in this process, one after another, sharing loaded models (the default)."""

    def __init__(self, config: cfg.SweepConfig, progress: bool) -> None:
        from bench.runner import CellRunner

        self.runner = CellRunner(config, Store(config.store_path), progress=progress)

    def remember(self, cell: Cell, record: dict[str, Any]) -> None:
        self.runner.remember(cell, record)

    def run(self, cells: list[Cell], claim: Claim) -> Iterator[tuple[Cell, dict[str, Any]]]:
        for cell in cells:
            if claim(cell):
                record = run_cell(self.runner, cell)
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


def _process_main(config: cfg.SweepConfig, cell: Cell, prior: Prior, conn: Any) -> None:
    conn.send(_worker_record(config, cell, prior))
    conn.close()


def run_in_subprocess(config: cfg.SweepConfig, cell: Cell, prior: Prior) -> dict[str, Any]:
    """One cell in a fresh process: its record, or a failed record when it times out, is killed or crashes."""
    ctx = multiprocessing.get_context("spawn")  # no fork: torch's thread pools and locks do not survive it
    timeout = config.executor.timeout_s or None
    receive, send = ctx.Pipe(duplex=False)
    # not daemonic: a cell may start processes of its own (torch.compile's compile workers)
    worker = ctx.Process(target=_process_main, args=(config, cell, prior, send))
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

    def run(self, cells: list[Cell], claim: Claim) -> Iterator[tuple[Cell, dict[str, Any]]]:
        for cell in cells:
            if claim(cell):
                record = run_in_subprocess(self.config, cell, self.prior_for(cell))
                self.remember(cell, record)
                yield cell, record


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (out of memory: the kernel's OOM killer sends SIGKILL)" if -exitcode == signal.SIGKILL else ""
        return f"worker process killed by {name}{hint}"
    return f"worker process exited with code {exitcode} without a record"


class Ray(_Workers):
    """Cells as Ray tasks with resource requests; joins ``executor.ray_address`` or starts a local Ray."""

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
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": ex.ray_address} if ex.ray_address else {
                "num_cpus": ex.local_cpus or None, "include_dashboard": False}
            try:
                ray.init(log_to_driver=False, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise UserError(f"cannot start or join Ray ({ex.ray_address or 'local'}): {exc}") from exc

    def options(self, cell: Cell) -> dict[str, Any]:
        """The resources a cell asks of the cluster: its threads as CPUs, one GPU for CUDA cells, the node label."""
        ex = self.config.executor
        options: dict[str, Any] = {"num_cpus": ex.ray_num_cpus or cell.spec["threads"], "max_retries": 0}
        if cell.spec["device"].startswith("cuda"):
            options["num_gpus"] = 1
        if ex.accelerator_type:
            options["accelerator_type"] = ex.accelerator_type
        return options

    def run(self, cells: list[Cell], claim: Claim) -> Iterator[tuple[Cell, dict[str, Any]]]:
        ray = self.ray
        # with a timeout, the task runs its cell in a subprocess on the node, which it can kill at the limit
        task = ray.remote(run_in_subprocess if self.config.executor.timeout_s else _worker_record)
        pending = {task.options(**self.options(cell)).remote(self.config, cell, self.prior_for(cell)): cell
                   for cell in cells if claim(cell)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            cell = pending.pop(ref)
            try:
                record = ray.get(ref)
            except ray.exceptions.OutOfMemoryError as exc:
                record = _failure(self.config, cell, f"out of memory: Ray killed the task ({str(exc)[:200]})")
            except ray.exceptions.RayError as exc:
                record = _failure(self.config, cell, f"Ray task failed: {type(exc).__name__}: {str(exc)[:300]}")
            yield cell, record


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
