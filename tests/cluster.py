"""A sweep on a two-node Ray cluster on the loopback, each node with its own zoo and cache as two machines have, with
the worker node killed while it runs a cell.

``python -m tests.cluster [DIR]`` runs it and prints what the cluster test asserts: trainings per node, the artifact
hashes across cells, attempts and nodes per cell, the unplaceable cells' message and the wall time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLERS = ("ddim", "euler")

CONFIG = """name = "cluster"
[model]
dataset = "digits"
resolution = 8
train_steps = 60

[quality]
n_samples = 48
extractor_steps = 150
reference_n = 300
bootstrap = 20

[latency]
min_repeats = 2
min_seconds = 0.0
denoiser_repeats = 3
remeasure = 0  # two nodes on one machine contend by design: no re-measuring here

[[hardware]]
threads = [1]
batch = [16]

[[hardware]]  # no node of the cluster has a GPU: these cells must fail at once, not wait
device = ["cuda"]
threads = [1]
batch = [16]

[[technique]]
name = "step_reduction"
steps = [3]
params = {{ sampler = {samplers} }}

[executor]
kind = "ray"
ray_address = "{address}"
"""


def _records(store: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(store.rglob("records/*.json"))]


def _artifact_folders(zoo: Path) -> list[str]:
    return sorted(p.name for p in zoo.iterdir() if p.is_dir() and not p.name.startswith(".")) if zoo.is_dir() else []


def two_node_sweep(root: Path, kill_worker: bool = True, timeout_s: float = 300) -> dict[str, Any]:
    """Start the cluster, run the sweep as a separate driver process, kill the worker node once it has received
    its first artifact (a cell is then in flight there), and collect what happened."""
    from ray.cluster_utils import Cluster

    homes = {name: {"BENCH_ZOO": str(root / name / "zoo"), "BENCH_CACHE": str(root / name / "cache")}
             for name in ("head", "worker", "driver")}
    start = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False, "env_vars": homes["head"]})
    try:
        worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", env_vars=homes["worker"])
        cluster.wait_for_nodes()
        config = root / "cluster.toml"
        config.write_text(CONFIG.format(samplers=json.dumps(list(SAMPLERS)), address=cluster.address))
        env = {**os.environ, **homes["driver"], "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        driver = subprocess.Popen([sys.executable, "-m", "bench", "sweep", "--config", str(config), "--results",
                                   str(root / "results"), "--no-progress", "--report", str(root / "report.html")],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=root)
        received = Path(homes["worker"]["BENCH_CACHE"]) / "artifacts"
        killed_at = None
        deadline = time.time() + timeout_s
        while kill_worker and killed_at is None and driver.poll() is None and time.time() < deadline:
            if received.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in received.iterdir()):
                cluster.remove_node(worker, allow_graceful=False)
                killed_at = time.perf_counter() - start
            time.sleep(0.05)
        output, _ = driver.communicate(timeout=max(1.0, deadline - time.time()))
    finally:
        cluster.shutdown()
    records = _records(root / "results")
    return {
        "returncode": driver.returncode, "output": output, "wall_s": time.perf_counter() - start,
        "killed_at_s": killed_at, "records": records,
        "trainings_in_driver": output.count("; training it ("),
        "zoo_artifacts": {name: _artifact_folders(Path(h["BENCH_ZOO"])) for name, h in homes.items()},
        "received": {name: _artifact_folders(Path(h["BENCH_CACHE"]) / "artifacts") for name, h in homes.items()},
    }


def summary(run: dict[str, Any]) -> dict[str, Any]:
    cells = [{"cell": f"{r['spec']['params'].get('sampler')} {r['spec']['device']}", "status": r["status"],
              "attempts": (r.get("execution") or {}).get("attempts"),
              "nodes": [n.get("node_id", "")[:8] for n in (r.get("execution") or {}).get("nodes", [])],
              "artifacts": {k: (a.get("id"), a.get("sha256", "")[:16]) for k, a in (r.get("artifacts") or {}).items()},
              "error": r.get("error")} for r in run["records"]]
    return {k: run[k] for k in ("returncode", "wall_s", "killed_at_s", "trainings_in_driver", "zoo_artifacts")} | {
        "cells": cells}


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    print(json.dumps(summary(two_node_sweep(folder)), indent=1))
