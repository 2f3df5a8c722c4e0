"""A sweep on a real multi-node Ray cluster (two nodes on the loopback, each its own zoo): artifacts trained once by
the driver and received by hash, a node killed mid-sweep costs nothing, an unplaceable cell fails at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import zoo
from tests.cluster import SAMPLERS, two_node_sweep

pytest.importorskip("ray")


def test_two_node_sweep_trains_once_survives_a_node_kill_and_fails_unplaceable_cells_fast(tmp_path: Path) -> None:
    run = two_node_sweep(tmp_path)
    output, records = run["output"], run["records"]
    assert f"{2 * len(SAMPLERS)} cells ({len(SAMPLERS)} failed)" in output, output

    # trained once, in the driver, before any cell; the nodes' zoos stay empty (they received the artifacts)
    assert run["trainings_in_driver"] == 2, output  # the FID classifier and the base model
    assert run["zoo_artifacts"]["head"] == run["zoo_artifacts"]["worker"] == []
    assert len(run["zoo_artifacts"]["driver"]) == 2
    assert output.index("; training it (") < output.index("FID ")

    cpu = [r for r in records if r["spec"]["device"] == "cpu"]
    cuda = [r for r in records if r["spec"]["device"] == "cuda"]
    # the node kill: every CPU cell stored once, none failed, one rerun by Ray on the surviving node
    assert run["killed_at_s"] is not None
    assert len(cpu) == len(SAMPLERS) and len({r["spec_hash"] for r in cpu}) == len(cpu)
    assert [r["status"] for r in cpu] == ["ok"] * len(cpu), [r.get("error") for r in cpu]
    retried = [r for r in cpu if r["execution"]["attempts"] > 1]
    assert len(retried) >= 1, [r["execution"] for r in cpu]
    nodes = retried[0]["execution"]["nodes"]
    assert len(nodes) == 2 and nodes[0]["node_id"] != nodes[1]["node_id"] and nodes[0]["ip"] == "127.0.0.1"

    # every cell used the very artifact the driver resolved, named by id and hash, never by a machine path
    driver_zoo = tmp_path / "driver" / "zoo"
    model = {(r["artifacts"]["model"]["id"], r["artifacts"]["model"]["sha256"],
              r["artifacts"]["model"]["weights_sha256"]) for r in cpu}
    assert len(model) == 1
    (artifact_id, sha, _), = model
    assert sha == zoo.tree_sha256(driver_zoo / artifact_id)
    assert not any(str(tmp_path) in json.dumps(r["artifacts"]) for r in cpu)

    # unplaceable: failed at once with what is missing, before the first CPU cell finished
    assert len(cuda) == len(SAMPLERS) and all(r["status"] == "failed" for r in cuda)
    assert all(r["error"].startswith("no node of the Ray cluster can run this cell: it needs CPU 1, GPU 1")
               for r in cuda)
    assert all(output.index(r["error"]) < output.index("FID ") for r in cuda)
