"""Training-free accelerations from the field's libraries (diffusers' cache hooks): FLOPs are those that ran, the
record says what the cache computed, a model the library cannot hook is skipped with the reason, and the support
matrix comes from trying."""

from __future__ import annotations

import pytest

from bench import store, support
from tests.conftest import ROOT, run_cli

CONFIG = ROOT / "tests" / "data" / "tiny_accelerations.toml"


@pytest.fixture(scope="module")
def accelerations_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("accelerations")
    result = run_cli("sweep", "--config", str(CONFIG), "--results", str(root / "results"), "--report",
                     str(root / "report.html"), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    return root, store.load(root / "results"), result.stdout


def _cached(df, method: str):
    rows = df[(df["technique"] == "feature_cache") & (df["param_method"] == method)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_cached_cells_count_full_evaluations_and_the_flops_that_ran(accelerations_sweep) -> None:
    _, df, _ = accelerations_sweep
    plain = df[(df["technique"] == "step_reduction") & (df["steps"] == 8)].iloc[0]
    for method in ("first_block", "taylorseer"):
        row = _cached(df, method)
        assert row["status"] == "ok"
        assert row["nfe"] == plain["nfe"] == 16  # NFE keeps counting network evaluations (8 guided steps)
        assert row["flops_per_call"] == plain["flops_per_call"]  # a full call, measured with the hooks off
        fraction = row["flops_ran_fraction_by_network"]["model"]
        assert 0 < fraction < 1
        assert row["flops_per_image"] == pytest.approx(fraction * row["flops_per_image_uncached"])
        assert row["flops_per_image_uncached"] == plain["flops_per_image"]
        obs = row["observations"]
        assert obs["cache_block_parts_asked"] > 0 and 0 < obs["attention_computed_fraction"] < 1
    # TaylorSeer at interval 5 after 3 warm-up steps computes steps 0-2 and 7 of 8: half the block parts
    assert _cached(df, "taylorseer")["observations"]["attention_computed_fraction"] == pytest.approx(0.5)
    first_block = _cached(df, "first_block")
    assert "once per network call" in first_block["info"]["batch_dependent"]
    assert first_block["info"]["cache"]["method"] == "first_block"
    # what the cache skipped over the timed batches agrees with the FLOPs counted on the first
    assert first_block["flops_ran_fraction_by_network"]["model"] == pytest.approx(
        first_block["observations"]["attention_computed_fraction"], abs=0.15)


def test_cache_dit_counts_full_evaluations_and_the_flops_that_ran(accelerations_sweep) -> None:
    _, df, _ = accelerations_sweep
    plain = df[(df["technique"] == "step_reduction") & (df["steps"] == 8)].iloc[0]
    row = df[df["technique"] == "cache_dit"].iloc[0]
    assert row["status"] == "ok", row.get("error")
    assert row["nfe"] == plain["nfe"] == 16 and row["flops_per_image_uncached"] == plain["flops_per_image"]
    fraction = row["flops_ran_fraction_by_network"]["model"]
    assert 0 < fraction < 1 and row["flops_per_image"] == pytest.approx(fraction * plain["flops_per_image"])
    obs = row["observations"]
    # warm-up 2 of 8 calls per branch in full, then at least the first and last block: never below 2 of 6 blocks
    assert 2 / 6 <= obs["attention_computed_fraction"] < 1
    assert row["info"]["cache"]["library"] == "cache-dit" and "once per network call" in row["info"]["batch_dependent"]


def test_cache_dit_refuses_guidance_that_breaks_its_call_order() -> None:
    """cache-dit tells the two guidance calls apart by their order; a guider guiding half the steps would shift it."""
    from bench import conformance
    from bench.conditioning import Guidance
    from bench.sampling import generators

    ctx = conformance.context("cache_dit")
    params = ctx.technique.Params()
    ctx.pipeline(params, 6, Guidance(scale=2.0)).sample(generators([0, 1]), None)  # every step guided: in order
    with pytest.raises(RuntimeError, match="pairs a guided step's two calls by their order"):
        ctx.pipeline(params, 6, Guidance(scale=2.0, start=0.5)).sample(generators([0, 1]), None)


def test_a_cache_on_a_unet_is_skipped_with_the_reason(tmp_path) -> None:
    text = (ROOT / "tests" / "data" / "tiny.toml").read_text().split("[[technique]]")[0]
    config = tmp_path / "unet_cache.toml"
    config.write_text(text + '[[technique]]\nname = "feature_cache"\nsteps = [3]\n')
    result = run_cli("sweep", "--config", str(config), "--results", str(tmp_path / "r"), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    df = store.load(tmp_path / "r")
    assert set(df["status"]) == {"skipped"}
    assert all("transformer_blocks" in r and "UNet2DModel" in r for r in df["reason"])


def test_support_matrix_is_found_by_trying() -> None:
    models = support.build_models({"U-Net": {}, "DiT": {"arch": "dit", "conditioning": "class"}}, "digits", 8)
    df = support.matrix(models, on=["cpu"]).set_index(["technique", "model"])["cpu"]
    assert df[("step_reduction", "U-Net")] == df[("step_reduction", "DiT")] == "runs"
    assert df[("feature_cache", "DiT")] == df[("feature_cache method=taylorseer", "DiT")] == "runs"
    assert df[("feature_cache", "U-Net")].startswith("skipped: ") and "UNet2DModel" in df[("feature_cache", "U-Net")]
    assert not any(name.startswith(("distillation", "truncation")) for name, _ in df.index)  # they need training
    result = run_cli("support", "--device", "cpu")
    assert result.returncode == 0 and "| feature_cache | DiT, class-conditional | runs |" in result.stdout


def test_the_contract_catches_a_cache_that_hooks_nothing(monkeypatch) -> None:
    """TaylorSeer with diffusers' default module patterns matches no module of a DiT and runs every call in full."""
    from bench import conformance
    from techniques import feature_cache

    ctx = conformance.context("feature_cache")
    conformance.check_partial_work(ctx)
    monkeypatch.setattr(feature_cache, "_TAYLORSEER_MODULES", ["^transformer_blocks.*attn"])
    with pytest.raises(conformance.ContractError, match="changed nothing"):
        conformance.check_partial_work(ctx)


@pytest.mark.parametrize(("technique", "library", "scheme"), [("quantization", "torchao", "int8_weight_only"),
                                                              ("quanto", "optimum-quanto", "qint8 weights")])
def test_quantized_cells_record_scheme_and_weight_bytes(accelerations_sweep, technique, library, scheme) -> None:
    _, df, _ = accelerations_sweep
    plain = df[(df["technique"] == "step_reduction") & (df["steps"] == 8)].iloc[0]
    row = df[df["technique"] == technique].iloc[0]
    assert row["status"] == "ok", row.get("error")
    q = row["info"]["quantization"]
    assert q["library"] == library and q["scheme"] == scheme
    assert q["weight_bytes"] < 0.5 * q["weight_bytes_before"]  # int8 linear weights: about a quarter of fp32's
    # the same multiply-adds: FLOPs and NFE as the plain cell's (quanto's counted on the unquantized network, as its
    # kernels escape the counters); the time is the cell's own
    assert (row["nfe"], row["flops_per_image"]) == (plain["nfe"], plain["flops_per_image"])
    assert row["latency_per_image_ms"] > 0 and "flops_ran_fraction_by_network" not in row["info"]


def test_quanto_flops_are_counted_on_the_unquantized_network() -> None:
    """quanto's linear kernels escape the counters (FlopCounterMode sees a sliver of a quantized DiT's FLOPs): the
    cell's FLOPs per call are the unquantized network's on the same inputs."""
    from bench import conformance, recipes
    from bench.measure.flops import CallRecorder, fvcore_flops, torch_flops
    from bench.sampling import generators

    ctx = conformance.context("quanto", recipes.denoiser_recipe("digits", 8, steps=40, arch="dit",
                                                                 conditioning="class"))
    params = ctx.technique.Params()
    pipe = ctx.pipeline(params, 2)
    recorder = CallRecorder(pipe.networks)
    pipe.sample(generators([0]), None)
    inputs = recorder.first_inputs["model"]
    full = getattr(ctx.models(params)["model"], "counted", ctx.models(params)["model"])
    assert recorder.flops_per_call(pipe.flops_counted_on) == {"model": fvcore_flops(full, inputs)}
    assert torch_flops(recorder.networks["model"], inputs) < 0.1 * torch_flops(full, inputs)


def test_quantization_without_torchao_is_skipped_with_the_install_line(monkeypatch) -> None:
    import builtins

    from bench.errors import Unsupported
    from techniques.quantization import Quantization

    real_import = builtins.__import__

    def no_torchao(name, *args, **kwargs):
        if name == "torchao" or name.startswith("torchao."):
            raise ImportError("No module named 'torchao'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchao)
    with pytest.raises(Unsupported, match=r"bench\[accel\]"):
        Quantization().pipeline(Quantization.Params(), {"model": None}, 4)


def test_the_report_judges_every_accelerated_cell_against_fewer_steps(accelerations_sweep) -> None:
    root, df, _ = accelerations_sweep
    page = (root / "report.html").read_text()
    section = page.split("id='accelerations'>")[1].split("<h2")[0]
    accelerated = df[df["technique"].isin(["feature_cache", "cache_dit", "quantization", "quanto"])]
    assert section.count("<tr>") == 2 * len(accelerated)  # one row per cell and cost axis (the header is styled)
    assert "step_reduction w=2 · 4 steps" in section  # the cheaper un-accelerated cell found
    assert all(v in section for v in ("MFLOPs / image", "ms / image"))
    assert any(v in section for v in ("dominated by fewer steps", "ahead of fewer steps", "undecided"))
