"""Class-conditional models through the common interface: labels fixed by seed, guidance through diffusers' guiders
with every network evaluation counted, class accuracy with paired intervals, unsupported techniques skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench import conditioning, recipes, train
from bench.conditioning import Guidance
from bench.measure.flops import CallRecorder
from bench.sampling import generators
from tests.conftest import ROOT, run_cli

CONFIG = ROOT / "tests" / "data" / "tiny_conditional.toml"


@pytest.fixture(scope="module")
def tiny_dit():
    return train.load_artifact(recipes.denoiser_recipe("digits", 8, steps=40, arch="dit", conditioning="class"),
                               progress=False)[0]


@pytest.fixture(scope="module")
def conditional_sweep(tmp_path_factory):
    from bench import store

    root = tmp_path_factory.mktemp("conditional")
    result = run_cli("sweep", "--config", str(CONFIG), "--results", str(root / "results"), "--report",
                     str(root / "report.html"), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    return root, store.load(root / "results"), result.stdout


def _cell(df, scale: float, start: float = 0.0):
    rows = df[(df["technique"] == "step_reduction") & df["guidance"].map(
        lambda g: g["scale"] == scale and g["start"] == start)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_guided_steps_count_two_evaluations_each(conditional_sweep) -> None:
    _, df, _ = conditional_sweep
    unguided, guided, late = _cell(df, 1.0), _cell(df, 3.0), _cell(df, 3.0, 0.34)
    assert (unguided["nfe"], guided["nfe"], late["nfe"]) == (3, 6, 5)
    assert late["observations"]["guidance_pattern"] == "uGG"  # int(0.34 · 3) = 1: steps 1 and 2 guided
    assert (late["observations"]["guided_steps"], late["observations"]["unguided_steps"]) == (2, 1)
    for row in (unguided, guided, late):  # FLOPs are those of the evaluations that ran
        assert row["flops_per_image"] == row["nfe"] * row["flops_per_call"]
        assert row["conditions"] == {"kind": "class", "num_classes": 10, "labels": conditioning.LABEL_RULE}
        assert row["info"]["conditions"]["null_class"] == 10


def test_class_accuracy_is_stored_per_seed_with_its_interval(conditional_sweep) -> None:
    _, df, _ = conditional_sweep
    for scale in (1.0, 3.0):
        row = _cell(df, scale)
        bits = row["class_correct"]["bits"]
        assert len(bits) == row["n_generated"] == 40 and set(bits) <= {"0", "1"}
        assert row["class_accuracy"] == pytest.approx(bits.count("1") / 40)
        assert row["class_accuracy_ci_low"] <= row["class_accuracy"] <= row["class_accuracy_ci_high"]


def test_paired_class_accuracy_flips_with_the_roles(conditional_sweep) -> None:
    from bench.compare import Comparer

    _, df, _ = conditional_sweep
    a, b = _cell(df, 1.0), _cell(df, 3.0)
    forward, backward = Comparer(cache=False).compare(a, b)["class_accuracy"], Comparer(cache=False).compare(
        b, a)["class_accuracy"]
    assert forward.delta == pytest.approx(b["class_accuracy"] - a["class_accuracy"])
    assert forward.delta == pytest.approx(-backward.delta) and forward.low == pytest.approx(-backward.high)


def test_guidance_distilled_students_guide_with_one_evaluation_per_step(conditional_sweep) -> None:
    _, df, _ = conditional_sweep
    rows = df[df["technique"] == "guidance_distillation"]
    assert set(rows["status"]) == {"ok"} and len(rows) == 2
    teacher = _cell(df, 3.0)
    for _, row in rows.iterrows():
        steps = int(row["steps"])
        assert row["nfe"] == steps  # w = 3 is the network's input: no second (null-class) evaluation
        assert row["observations"]["guidance_pattern"] == "W" * steps
        assert (row["observations"]["guided_steps"], row["observations"]["unguided_steps"]) == (steps, 0)
        assert row["flops_per_image"] == row["nfe"] * row["flops_per_call"]
        # one evaluation costs the teacher's plus the guidance embedding's small MLP
        assert teacher["flops_per_call"] < row["flops_per_call"] < 1.05 * teacher["flops_per_call"]
    progressive = rows[rows["param_method"] == "progressive"].iloc[0]
    assert set(progressive["artifacts"]) == {"model", "student1"}
    assert progressive["artifacts"]["student1"]["recipe"].endswith("-gd1-3-pd1")


def _student(tiny_dit):
    student = tiny_dit.derived(embed_guidance=True).eval()
    torch.nn.init.normal_(student.evaluation.guidance_embedding.mlp.linear_2.weight, std=0.05)
    return student


def test_guidance_embedding_starts_at_the_teacher_and_makes_w_an_input(tiny_dit, tmp_path: Path) -> None:
    from bench.model import load_denoiser, save_denoiser

    x, t, labels = torch.randn(4, 1, 8, 8), torch.full((4,), 500), torch.tensor([0, 1, 2, 3])
    fresh = tiny_dit.derived(embed_guidance=True).eval()
    with torch.no_grad():
        teacher = tiny_dit.evaluation(x, t, labels)
        torch.testing.assert_close(fresh.evaluation(x, t, labels, torch.full((4,), 3.0)), teacher)
        student = _student(tiny_dit)
        by_w = [student.evaluation(x, t, labels, torch.full((4,), w)) for w in (1.0, 3.0)]
        assert not torch.allclose(*by_w)
        save_denoiser(student, tmp_path / "student")
        loaded = load_denoiser(tmp_path / "student")
        assert loaded.embeds_guidance and loaded.num_classes == 10
        torch.testing.assert_close(loaded.evaluation(x, t, labels, torch.full((4,), 3.0)), by_w[1])
        with conditioning.conditioned(labels, Guidance(scale=3.0)) as state:
            torch.testing.assert_close(student(x, t), by_w[1])  # the cell's scale reaches the network
        assert state.steps == ["W"]
        with conditioning.conditioned(labels, Guidance(guider="apg", scale=3.0)), \
                pytest.raises(RuntimeError, match="learned classifier-free guidance"):
            student(x, t)


def test_stage_one_matches_the_guided_teacher(tiny_dit) -> None:
    """The student starts as the teacher's conditional prediction: its loss is zero where the target is unguided
    (w = 1) and positive where the guided teacher differs (w in [2, 3])."""
    from bench import zoo
    from techniques.guidance_distillation import GuidedStudentObjective

    base = recipes.denoiser_recipe("digits", 8, steps=40, arch="dit", conditioning="class")
    x0, labels = torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8)
    losses = []
    for w_range in ((1.0, 1.0), (2.0, 3.0)):
        objective = GuidedStudentObjective()
        recipe = zoo.Recipe.from_dict({**base.to_dict(), "objective": "guidance_distillation",
                                       "options": {"teacher": base.to_dict(), "w_min": w_range[0],
                                                   "w_max": w_range[1]}})
        student = objective.build(recipe, (1, 8, 8), 10)
        with torch.no_grad():
            losses.append(float(objective.loss(student, x0, labels, torch.Generator().manual_seed(0))))
    assert losses[0] == pytest.approx(0.0, abs=1e-10) and losses[1] > 1e-6


def test_unsupported_technique_is_skipped_with_its_reason_and_never_trained(conditional_sweep) -> None:
    _, df, stdout = conditional_sweep
    row = df[df["technique"] == "distillation"].iloc[0]
    assert row["status"] == "skipped"
    assert "distillation does not support class models" in row["reason"]
    assert "-class-pd1" not in stdout  # no student was trained for it (guidance distillation's is -gd1-3-pd1)


def test_report_draws_the_guidance_trade_off(conditional_sweep) -> None:
    root, _, _ = conditional_sweep
    html = (root / "report.html").read_text()
    assert "Guidance: quality against class accuracy" in html
    assert "class accuracy [95% CI]" in html
    assert "w=3 on [0.34, 1)" in html  # the interval cell in the table beside full guidance


@pytest.mark.parametrize("sampler, steps, scale", [("ddim", 3, 2.0), ("ddim", 10, 4.0), ("ddpm", 20, 2.0)])
def test_an_image_depends_on_its_seed_only(tiny_dit, sampler, steps, scale) -> None:
    """Seed-only up to kernel rounding (bench.sampling's one rule): batched kernels round differently by batch size
    and CPU, so a default-tolerance float comparison fails on some machines of this kind (1.35e-5 on an AVX2 EPYC)."""
    from bench.sampling import seed_only_mismatch
    from techniques.step_reduction import make_sampler

    sample, _ = conditioning.conditional_sampler(make_sampler(tiny_dit, sampler, steps), 10, Guidance(scale=scale))
    recorder = CallRecorder({"model": tiny_dit})
    with torch.no_grad():
        whole = sample(generators(range(6)))
        evaluations = recorder.calls["model"]
        part = sample(generators([4, 5, 3]))
    recorder.remove()
    assert evaluations == 2 * steps  # guided: label and null-class evaluation per step
    assert seed_only_mismatch(part, whole[[4, 5, 3]], evaluations) is None
    assert not torch.allclose(whole[4], whole[5])


def test_guidance_is_the_guiders_arithmetic(tiny_dit) -> None:
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 500)
    labels = conditioning.labels_for_seeds([0, 1, 2, 13], 10)
    assert labels.tolist() == [0, 1, 2, 3]
    with torch.no_grad():
        cond = tiny_dit.evaluation(x, t, labels)
        uncond = tiny_dit.evaluation(x, t, torch.full((4,), 10))
        with conditioning.conditioned(labels, Guidance(scale=4.0)):
            guided = tiny_dit(x, t)
        with conditioning.conditioned(labels, None):
            plain = tiny_dit(x, t)
    torch.testing.assert_close(guided, uncond + 4.0 * (cond - uncond))
    torch.testing.assert_close(plain, cond)
    assert not torch.allclose(cond, uncond)  # the null class is a condition of its own


def test_a_conditional_model_outside_conditions_refuses(tiny_dit) -> None:
    with pytest.raises(RuntimeError, match="without labels"):
        tiny_dit(torch.randn(2, 1, 8, 8), 10)


def test_dit_label_embedders_never_drop_labels_in_train_mode(tiny_dit) -> None:
    """diffusers' DiT drops labels in each of its label embedders in train() mode (7 independent draws); the zoo's
    DiT drops them once per image in the loss instead, so train-mode and eval-mode predictions agree."""
    import copy

    net = copy.deepcopy(tiny_dit.net)
    x, t, labels = torch.randn(64, 1, 8, 8), torch.full((64,), 300), torch.arange(64) % 10
    with torch.no_grad():
        net.eval()
        expected = net(x, t, labels).sample
        net.train()
        torch.manual_seed(0)
        got = net(x, t, labels).sample
    torch.testing.assert_close(got, expected)


def test_nfe_hooks_count_each_evaluation_of_a_guided_call(tiny_dit) -> None:
    recorder = CallRecorder({"model": tiny_dit})
    labels = torch.tensor([1, 2])
    with torch.no_grad(), conditioning.conditioned(labels, Guidance(scale=2.0)):
        tiny_dit(torch.randn(2, 1, 8, 8), 10)
    assert recorder.calls["model"] == 2
    assert len(recorder.first_inputs["model"]) == 3  # (x, t, labels) at batch 1: what FLOPs are counted on
    recorder.remove()


def test_labels_follow_seeds_class_balanced() -> None:
    """The label rule, as the report describes it: seeds 0..15 of a grid ask for digits 0..9, 0..5."""
    assert conditioning.labels_for_seeds(range(16), 10).tolist() == [*range(10), *range(6)]


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.arch=dit", "model.conditioning=none"], "model.arch = 'dit' is class-conditional"),
    (["model.conditioning=pixel"], "model.conditioning 'pixel' is not none, class or text"),
    (["model.conditioning=text"], "model.conditioning = 'text' needs model.pretrained"),
])
def test_bad_model_kind_is_one_line(tmp_path: Path, overrides: list[str], message: str) -> None:
    args = [a for o in overrides for a in ("--set", o)]
    result = run_cli("sweep", "--config", str(CONFIG), "--results", str(tmp_path), "--dry-run", *args)
    assert result.returncode != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_guidance_on_an_unconditional_model_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text((ROOT / "tests" / "data" / "tiny.toml").read_text().replace(
        'params = { sampler = ["ddpm"', 'guidance = [2.0]\nparams = { sampler = ["ddpm"', 1))
    result = run_cli("sweep", "--config", str(config), "--results", str(tmp_path), "--dry-run")
    assert result.returncode != 0
    assert "technique[0].guidance applies to class- or text-conditional models" in result.stderr


def test_bad_guider_and_interval_are_refused(tmp_path: Path) -> None:
    text = CONFIG.read_text()
    for bad, message in ((text.replace('guidance = [1.0, 3.0]', 'guidance = [3.0]\nguider = ["pag"]'),
                          "guider 'pag' is not one of"),
                         (text.replace("[0.34, 1.0]", "[0.8, 0.2]"), "guidance interval [0.8, 0.2)")):
        config = tmp_path / "c.toml"
        config.write_text(bad)
        result = run_cli("sweep", "--config", str(config), "--results", str(tmp_path), "--dry-run")
        assert result.returncode != 0 and message in result.stderr, result.stderr


def test_techniques_command_lists_model_kinds() -> None:
    result = run_cli("techniques")
    assert result.returncode == 0
    step_reduction = result.stdout.split("step_reduction (")[1].split("\n")
    assert "    models: unconditional, class, text" in step_reduction
    assert "cells on class, text models are stored skipped" in result.stdout


def test_class_bits_pair_with_the_feature_draws() -> None:
    from bench import stats

    a = np.array([1, 1, 0, 1, 0, 1, 1, 1])
    b = np.array([0, 1, 0, 1, 0, 0, 1, 1])
    draws = stats.Draws.make(8, 5, 200)
    d = stats.paired_proportion(b, a, draws.gen_counts)
    assert d.delta == pytest.approx(-2 / 8) and d.low < d.delta < d.high
    assert stats.paired_proportion(a, a, draws.gen_counts).verdict == "same"
    low, high = stats.proportion_interval(8, 8)
    assert high == pytest.approx(1.0) and 0.6 < low < 0.7  # Wilson: 0.676 for 8 of 8


@pytest.fixture(scope="module")
def latent_sweep(tmp_path_factory):
    from bench import store

    root = tmp_path_factory.mktemp("latent")
    config = ROOT / "tests" / "data" / "tiny_latent.toml"
    result = run_cli("sweep", "--config", str(config), "--results", str(root / "results"), "--report",
                     str(root / "report.html"), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    return root, store.load(root / "results")


def test_latent_cells_count_the_decode_apart_from_the_denoiser(latent_sweep) -> None:
    _, df = latent_sweep
    for scale, nfe in ((1.0, 3), (3.0, 6)):
        row = _cell(df, scale)
        assert row["status"] == "ok" and row["nfe"] == nfe  # the decode is not a network evaluation of the loop
        assert row["nfe_by_network"] == {"model": nfe, "decode": 1}
        stages = row["flops_per_image_by_stage"]
        assert stages["denoiser"] == nfe * row["flops_per_call_by_network"]["model"]
        assert stages["decode"] == row["flops_per_call_by_network"]["decode"] > 0
        assert row["flops_per_image"] == stages["denoiser"] + stages["decode"]
        assert row["decode_ms_per_image"] > 0
        assert "the VAE decode of every image" in row["latency_includes"]
    student = df[df["technique"] == "guidance_distillation"].iloc[0]  # distilled on the latents, decoded the same
    assert student["status"] == "ok" and student["nfe_by_network"] == {"student": 3, "decode": 1}
    assert student["observations"]["guidance_pattern"] == "WWW"


def test_latent_model_samples_in_latent_space_and_decodes_to_pixels() -> None:
    from bench.pipelines import decoded_pipeline
    from techniques.step_reduction import StepReduction

    recipe = recipes.denoiser_recipe("digits", 8, steps=40, arch="dit", conditioning="class", latent=True)
    model = train.load_artifact(recipe, progress=False)[0]
    assert model.image_shape == (4, 2, 2) and model.decoder is not None  # 8×8×1 → 4×2×2
    assert model.scheduler_config["clip_sample"] is False  # latents are not bounded to a pixel range
    pipe = StepReduction().pipeline(StepReduction.Params(), {"model": model}, 3)
    images, _ = conditioning.conditional_sampler(decoded_pipeline(pipe, model.decoder).sample, 10, None)
    with torch.no_grad():
        x = images(generators(range(3)))
    assert x.shape == (3, 1, 8, 8) and x.abs().max() <= 1


def _pretrained_config(tmp_path: Path, folder: Path, conditioning: bool = True) -> Path:
    text = CONFIG.read_text().replace('arch = "dit"\n', f'pretrained = "{folder}"\n')
    if not conditioning:  # and no guidance, which needs it
        text = "".join(line for line in text.replace('conditioning = "class"\n', "").splitlines(keepends=True)
                       if not line.startswith("guidance"))
    config = tmp_path / "pretrained.toml"
    config.write_text(text.split("[[technique]]\nname = \"distillation\"")[0])  # the samplers' entry only
    return config


def test_a_pretrained_class_conditional_dit_is_sampled_guided(tiny_dit, tmp_path: Path) -> None:
    """A user's class-conditional DiT folder (diffusers layout) as the base: labels by seed, guidance, class
    accuracy, the model addressed by its weights hash."""
    from bench import store
    from bench.model import save_denoiser

    folder = tmp_path / "my dit"
    save_denoiser(tiny_dit, folder)
    result = run_cli("sweep", "--config", str(_pretrained_config(tmp_path, folder)), "--results",
                     str(tmp_path / "results"), "--report", str(tmp_path / "r.html"), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    df = store.load(tmp_path / "results")
    assert set(df["status"]) == {"ok"} and len(df) == 3  # w = 1, w = 3, w = 3 on [0.34, 1)
    assert df["model"].map(lambda m: m["recipe"].startswith("digits8-pretrained-dit-")).all()
    guided = _cell(df, 3.0)
    assert guided["nfe"] == 6 and 0.0 <= guided["class_accuracy"] <= 1.0
    assert guided["conditions"]["num_classes"] == 10


def test_a_pretrained_models_kind_must_match_the_config(tiny_dit, tiny_base, tmp_path: Path) -> None:
    from bench.model import save_denoiser

    save_denoiser(tiny_dit, tmp_path / "dit")
    save_denoiser(train.load_artifact(tiny_base, progress=False)[0], tmp_path / "unet")
    for folder, conditional, message in ((tmp_path / "dit", False, "is class-conditional (10 classes): set "
                                                                     "model.conditioning = 'class'"),
                                          (tmp_path / "unet", True, "is unconditional (no label input)")):
        config = _pretrained_config(tmp_path, folder, conditional)
        result = run_cli("sweep", "--config", str(config), "--results", str(tmp_path / "r"), "--dry-run")
        assert result.returncode != 0 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
