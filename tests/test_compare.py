"""Paired verdicts: the statistics against torch-fidelity and against known answers, per-image features in the store,
extending a cell to more seeds, ``bench compare`` on cells and stores with its exit codes, and the report's Δ."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench import compare, report, stats, store
from tests.conftest import TINY_CONFIG, run_cli


def _features(n: int, d: int = 16, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


# -- statistics -----------------------------------------------------------------------------------------------------
def test_point_metrics_equal_torch_fidelity() -> None:
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    gen, ref = np.abs(_features(300, seed=1)) * 2, np.abs(_features(300, seed=2) + 0.2) * 2
    tg, tr = torch.from_numpy(gen), torch.from_numpy(ref)
    fid = fid_statistics_to_metric(fid_features_to_statistics(tg), fid_features_to_statistics(tr), False)
    assert stats.fid(gen, ref) == pytest.approx(fid["frechet_inception_distance"], rel=1e-10)
    # one subset of all the images: torch-fidelity's KID is then exactly the full-sample unbiased estimator
    kid = kid_features_to_metric(tg, tr, kid_subsets=1, kid_subset_size=300, rng_seed=0, verbose=False)
    assert stats.kid(gen, ref) == pytest.approx(kid["kernel_inception_distance_mean"], rel=1e-10)
    prc = prc_features_to_metric(tg.float(), tr.float(), prc_neighborhood=3, prc_batch_size=10000,
                                 save_cpu_ram=True, verbose=False)
    assert stats.precision_recall(gen, ref) == pytest.approx((prc["precision"], prc["recall"]), abs=1e-6)


def test_paired_interval_is_narrower_than_unpaired_and_its_verdict_follows_the_truth() -> None:
    ref = _features(1000, seed=3)
    a = _features(400, seed=4)
    # B: the same seeds' images, slightly worse (a small mean shift plus per-image jitter), as a similar sampler gives
    b = a + 0.08 + np.random.default_rng(5).normal(scale=0.05, size=a.shape)
    d = stats.paired_differences(a, b, ref, draws=300)
    assert d["fid"].delta < 0 and d["fid"].verdict == "better"  # A is better than B
    paired = d["fid"].high - d["fid"].low
    # the same difference bootstrapped as if the cells were unrelated: independent draws for each
    boot_a, boot_b = (stats.bootstrap_metrics(x, stats.Reference(ref, stats.Draws.make(len(x), len(ref), 300, seed)),
                                              ("fid",))["fid"] for x, seed in ((a, 1), (b, 2)))
    unpaired = stats.Z95 * 2 * np.std(boot_a - boot_b, ddof=1)
    assert paired < 0.5 * unpaired  # what pairing buys: the seeds' noise cancels
    same = stats.paired_differences(a, a.copy(), ref, draws=50)
    assert all(x.verdict == "same" and x.delta == 0 for x in same.values())
    # independent images of one distribution: no decided difference (the interval must not be too narrow)
    null = stats.paired_differences(a, _features(400, seed=6), ref, draws=300)
    assert null["fid"].verdict == "undecided" and null["fid"].low < 0 < null["fid"].high


def test_fid_infinity_removes_most_of_the_small_n_bias() -> None:
    d, shift = 64, 0.5  # two unit Gaussians: the true FID is d · shift² (64-d, like the offline extractor)
    truth = d * shift**2
    ref = _features(20000, d, seed=7)
    gen = _features(400, d, shift, seed=8)
    fit = stats.fid_infinity(gen, ref, repeats=5)
    at_n = stats.fid(gen, ref)
    assert at_n - truth > 2.0  # FID at N = 400 is biased upward (measured: +2.8 to +3.3 over four seeds)
    assert abs(fit["fid_inf"] - truth) < 0.25 * (at_n - truth)  # measured: within 0.3
    assert fit["fid_inf_slope"] > 0 and fit["fid_inf_n"][-1] == 400


def test_latency_ratio_interval() -> None:
    base = list(np.random.default_rng(0).normal(1.0, 0.01, 20))
    slow = [v * 1.3 for v in base]
    ratio, low, high = stats.median_ratio(base, slow)
    assert ratio == pytest.approx(1.3) and 1.2 < low <= ratio <= high < 1.4
    ratio, low, high = stats.median_ratio(base, list(np.random.default_rng(1).normal(1.0, 0.01, 20)))
    assert low < 1 < high


def test_decided_front_keeps_points_whose_difference_is_undecided() -> None:
    df = pd.DataFrame({"cost": [1.0, 2.0, 3.0], "fid": [10.0, 9.5, 4.0]})
    # 0 → 1 is within noise (undecided); 2 is decidedly better than both
    decided = {(2, 0), (2, 1)}
    marked = report.pareto_front(df, "cost", "fid", better=lambda q, p: (q, p) in decided)
    assert list(marked["on_front"]) == [True, True, True]
    assert list(marked["on_point_front"]) == [True, True, True]
    decided.add((0, 1))
    assert list(report.pareto_front(df, "cost", "fid", better=lambda q, p: (q, p) in decided)["on_front"]) == [
        True, False, True]


def test_thresholds_parse_and_refuse_nonsense() -> None:
    parsed = compare.parse_thresholds("slower:5%, fid:+1,recall:-0.02")
    assert [(t.metric, t.amount) for t in parsed] == [("slower", 0.05), ("fid", 1.0), ("recall", 0.02)]
    for bad in ("slower:5", "fid:-1", "speed:3%", "fid"):
        with pytest.raises(Exception, match="--fail-on"):
            compare.parse_thresholds(bad)


# -- the store, extension, the CLI ----------------------------------------------------------------------------------
def test_stored_features_reproduce_every_quality_figure(tiny_sweep) -> None:
    _, df, _ = tiny_sweep
    row = df[df["quality_reused_from"].isna()].iloc[0]
    gen = store.load_features(row["store"], row["features"]["generated"])
    ref = store.load_features(row["store"], row["features"]["reference"])
    assert gen.shape == (48, 64) and ref.shape == (300, 64)
    assert row["features"]["generated"]["seeds"] == [0, 48]
    assert stats.fid(gen, ref) == pytest.approx(row["fid"], rel=1e-9)
    assert stats.precision_recall(gen, ref) == pytest.approx((row["precision"], row["recall"]), abs=1e-6)
    assert all(isinstance(f, dict) and "sha256" in f["generated"] for f in df["features"])
    reused = df[df["quality_reused_from"].notna()].iloc[0]
    source = df.set_index("spec_hash").loc[reused["quality_reused_from"]]
    assert reused["features"]["generated"]["sha256"] == source["features"]["generated"]["sha256"]


def test_a_corrupted_features_file_is_refused(tiny_sweep, tmp_path: Path) -> None:
    root, df, _ = tiny_sweep
    copy = tmp_path / "copy"
    shutil.copytree(root / "results" / "tiny", copy)
    row = df.iloc[0]
    path = copy / row["features"]["generated"]["file"]
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(Exception, match="does not match the sha256"):
        store.load_features(copy, row["features"]["generated"])


def _small_config(tmp_path: Path, n: int, name: str = "c.toml") -> Path:
    header = TINY_CONFIG.read_text().split("[[technique]]")[0].replace("threads = [1, 2]", "threads = [1]")
    path = tmp_path / name
    path.write_text(header.replace("n_samples = 48", f"n_samples = {n}")
                    + '[[technique]]\nname = "step_reduction"\nsteps = [3]\nparams = { sampler = ["ddim", "unipc"] }\n')
    return path


def test_extending_n_generates_only_the_new_seeds_and_equals_a_fresh_run(tmp_path: Path) -> None:
    def sweep(n: int, results: str) -> str:
        result = run_cli("sweep", "--config", str(_small_config(tmp_path, n, f"c{n}.toml")), "--results",
                         str(tmp_path / results), "--report", str(tmp_path / f"{results}.html"), "--no-progress")
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    sweep(32, "grown")
    out = sweep(48, "grown")
    assert out.count("16 new seeds") == 2
    sweep(48, "fresh")
    grown, fresh = (store.load(tmp_path / r) for r in ("grown", "fresh"))
    grown = grown[grown["n_samples"] == 48].set_index("param_sampler")
    fresh = fresh.set_index("param_sampler")
    for sampler in ("ddim", "unipc"):
        g, f = grown.loc[sampler], fresh.loc[sampler]
        assert g["n_newly_generated"] == 16 and f["n_newly_generated"] == 48
        assert g["quality_extended_from"] and g["features"]["generated"]["sha256"] == f["features"][
            "generated"]["sha256"]
        assert g["fid"] == pytest.approx(f["fid"], rel=1e-12)
        assert g["timed_images"] < f["timed_images"]
    # the smaller-N cells stay in the store (nothing stored is lost) but the report shows the extended ones
    page = (tmp_path / "grown.html").read_text()
    assert "2 cell(s) stored at a smaller N are not shown" in page
    small = store.load(tmp_path / "grown")
    small = small[small["n_samples"] == 32].iloc[0]
    result = run_cli("compare", small["spec_hash"], grown.loc[small["param_sampler"], "spec_hash"], "--results",
                     str(tmp_path / "grown"))  # a superseded cell can still be named; they pair on 32 seeds
    assert result.returncode == 0 and "same" in result.stdout, result.stdout + result.stderr

    # a fresh worker process extends too: the stored features travel to it, only the new seeds are generated
    config = _small_config(tmp_path, 64, "c64.toml")
    config.write_text(config.read_text() + '\n[executor]\nkind = "process"\n')
    result = run_cli("sweep", "--config", str(config), "--results", str(tmp_path / "grown"), "--report",
                     str(tmp_path / "g64.html"), "--no-progress")
    assert result.returncode == 0 and result.stdout.count("16 new seeds") == 2, result.stdout + result.stderr


def _slowed_copy(src: Path, dst: Path, factor: float, worse_cell: str | None = None) -> None:
    """A copy of a store whose batch times are ``factor`` × longer, and one cell's features moved far off the
    reference (the tiny models' FIDs are so large that milder damage can move them either way)."""
    shutil.copytree(src, dst)
    for path in (dst / "records").glob("*.json"):
        record = json.loads(path.read_text())
        if record["status"] == "ok":
            record["raw"]["latency_batch_s"] = [v * factor for v in record["raw"]["latency_batch_s"]]
            if record["spec_hash"] == worse_cell:
                entry = record["features"]["generated"]
                gen = store.load_features(dst, entry)
                record["features"]["generated"] = {**entry, **store.Store(dst).save_features(
                    f"{worse_cell}-degraded", gen + 50.0)}
            path.write_text(json.dumps(record))


def test_compare_cells_and_stores_with_exit_codes(tiny_sweep, tmp_path: Path) -> None:
    root, df, _ = tiny_sweep
    a_store = root / "results" / "tiny"
    steps = df[(df["technique"] == "step_reduction") & (df["threads"] == 1)].set_index("param_sampler")
    ddim, unipc = steps.loc["ddim", "spec_hash"], steps.loc["unipc", "spec_hash"]

    result = run_cli("compare", ddim[:8], unipc[:8], "--results", str(a_store))
    assert result.returncode == 0, result.stderr
    assert "ΔFID B−A" in result.stdout and "1 matched cell(s)" in result.stdout
    assert re.search(r"(better|worse|undecided)", result.stdout)

    result = run_cli("compare", "deadbeefcafe", ddim, "--results", str(a_store))
    assert result.returncode == 2 and "no cell 'deadbeefcafe'" in result.stderr
    assert result.stderr.strip().count("\n") == 0

    slowed = tmp_path / "slowed"
    _slowed_copy(a_store, slowed, 1.5, worse_cell=ddim)
    result = run_cli("compare", str(a_store), str(slowed), "--fail-on", "slower:5%", "--html",
                     str(tmp_path / "c.html"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "threshold(s) exceeded" in result.stdout and "1.500×" in result.stdout
    assert f"{len(df)} matched cell(s)" in result.stdout
    assert "slower" in (tmp_path / "c.html").read_text()
    result = run_cli("compare", str(a_store), str(slowed), "--fail-on", "slower:80%")
    assert result.returncode == 0 and "no decided change beyond" in result.stdout
    result = run_cli("compare", str(a_store), str(slowed), "--fail-on", "fid:+1")
    assert result.returncode == 1 and "Δfid" in result.stdout and "sampler=ddim" in result.stdout
    # the same store against itself: identical images, every quality verdict "same", no failure
    result = run_cli("compare", str(a_store), str(a_store), "--fail-on", "slower:1%,fid:+0")
    table = result.stdout.split("no decided change")[0]
    assert result.returncode == 0 and "same" in table and "worse" not in table and "better" not in table
    result = run_cli("compare", str(a_store), str(slowed), "--fail-on", "fid:-1")
    assert result.returncode == 2 and "--fail-on" in result.stderr


def test_report_shows_decided_differences_against_the_reference(tiny_sweep) -> None:
    root, _, _ = tiny_sweep
    page = (root / "report.html").read_text()
    assert "ΔFID vs reference [95% CI]" in page and "what is decided" in page
    assert "decidedly" in page and "ringed" in page
    headers = re.findall(r"<th>([^<]*)</th>", page.split("id='cell-table'")[1].split("</thead>")[0])
    assert len(headers) == len(set(headers)) and "params" not in headers
    # the interval column sorts by its lower bound, as a number
    column = headers.index("FID 95% CI")
    body = page.split("id='cell-table'")[1].split("<tbody>")[1].split("</tbody>")[0]
    values = [re.findall(r"data-v='([^']*)'", row)[column] for row in body.split("<tr")[1:]]
    assert values and all(float(v) >= 0 for v in values)


def _with_reference(src: Path, dst: Path, change) -> None:
    """A copy of a store whose records point at a changed copy of the reference features (saved beside the
    original, as a sweep on another machine saves its own)."""
    shutil.copytree(src, dst)
    for path in (dst / "records").glob("*.json"):
        record = json.loads(path.read_text())
        if record["status"] == "ok":
            entry = record["features"]["reference"]
            ref = store.load_features(dst, entry).astype(np.float16)
            record["features"]["reference"] = store.Store(dst).save_features("ref-copy", change(ref))
            path.write_text(json.dumps(record))


def test_cells_scored_against_another_machines_copy_of_the_reference_still_pair(tiny_sweep, tmp_path: Path) -> None:
    """The same reference recomputed on another CPU differs in its last bits: one float16 step is the same set."""
    root, df, _ = tiny_sweep
    a_store = root / "results" / "tiny"
    a = store.load(a_store)
    row_a = a[(a["status"] == "ok")].iloc[0]

    def nudged(ref: np.ndarray) -> np.ndarray:  # a few values one float16 step up
        out = ref.copy()
        out.flat[::97] = np.nextafter(out.flat[::97], np.float16(np.inf))
        return out

    _with_reference(a_store, tmp_path / "other_cpu", nudged)
    b = store.load(tmp_path / "other_cpu")
    row_b = b[b["spec_hash"] == row_a["spec_hash"]].iloc[0]
    assert row_b["features"]["reference"]["sha256"] != row_a["features"]["reference"]["sha256"]
    assert compare.comparable(row_a, row_b) is None
    d = compare.Comparer(draws=50, cache=False).compare(row_a, row_b)
    assert d["fid"].verdict == "same" and d["fid"].delta == 0  # the same images against one shared copy

    _with_reference(a_store, tmp_path / "other_set", lambda ref: ref + np.float16(0.5))
    c = store.load(tmp_path / "other_set")
    row_c = c[c["spec_hash"] == row_a["spec_hash"]].iloc[0]
    assert "different reference features" in compare.comparable(row_a, row_c)


def test_a_sweep_on_another_machine_scores_against_the_stored_reference(tmp_path: Path) -> None:
    s = store.Store(tmp_path)
    s.prepare()
    ref = _features(40, d=8).astype(np.float16).astype(np.float32)
    entry = s.save_features("ref", ref)
    recomputed = ref + np.abs(np.spacing(ref.astype(np.float16))).astype(np.float32) * 0.4  # rounds back or one up
    found = s.features_agreeing("ref", recomputed)
    assert found is not None and found[0] == entry
    np.testing.assert_array_equal(found[1].numpy(), ref)
    assert s.features_agreeing("ref", ref + 0.5) is None and s.features_agreeing("other", ref) is None
