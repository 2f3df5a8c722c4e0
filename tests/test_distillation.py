"""Distillation: the targets are the method's, the chain's costs add up, students exist only for their step counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import train, zoo
from bench.sampling import DiscreteSchedule, generators, noise_like
from bench.train import lr_factor
from techniques.distillation import (
    ConsistencyObjective,
    Distillation,
    ProgressiveObjective,
    boundary_scalings,
    consistency_function,
    consistency_grid,
    consistency_timesteps,
)
from techniques.step_reduction import make_sampler
from tests.conftest import TINY_CONFIG, run_cli


@pytest.fixture(scope="module")
def schedule(tiny_denoiser) -> DiscreteSchedule:
    return DiscreteSchedule(tiny_denoiser.scheduler_config)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32])
def test_student_grid_is_every_other_point_of_the_teacher_grid(schedule, n: int) -> None:
    teacher, student = schedule.trailing_grid(2 * n), schedule.trailing_grid(n)
    assert teacher[::2] == student and teacher[0] == 999 and student[-1] == -1


@torch.no_grad()
def test_ddim_on_the_grid_reproduces_the_step_reduction_ddim_cells(tiny_denoiser, schedule) -> None:
    ours = schedule.ddim(tiny_denoiser, noise_like(generators(range(6)), tiny_denoiser.image_shape, "cpu"),
                         schedule.trailing_grid(4))
    diffusers = make_sampler(tiny_denoiser, "ddim", 4)(generators(range(6)))
    assert torch.equal(ours, diffusers)


@torch.no_grad()
def test_progressive_target_makes_one_student_step_land_on_the_teachers_two(tiny_base, schedule) -> None:
    """x̃ is defined so that one DDIM step with x̂_0 = x̃ from z_t reaches the teacher's z_t'' exactly."""
    objective = ProgressiveObjective()
    objective.build(Distillation().artifacts(Distillation.Params(), tiny_base)["student8"], (1, 8, 8), 10)
    n = 6
    i = torch.arange(n) % 8
    t, t_mid, t_end = objective.student_grid[i], objective.teacher_grid[2 * i + 1], objective.student_grid[i + 1]
    z_t = schedule.diffuse(torch.rand(n, 1, 8, 8) * 2 - 1, t, torch.randn(n, 1, 8, 8))
    target = objective._teacher_two_steps(z_t, t, t_mid, t_end)
    x0, eps = schedule.predict(objective.teacher, z_t, t)
    z_mid = schedule.ddim_step(x0, eps, t_mid)
    x0, eps = schedule.predict(objective.teacher, z_mid, t_mid)
    teacher_end = schedule.ddim_step(x0, eps, t_end)
    a, s = schedule.a_s(t, z_t)
    student_end = schedule.ddim_step(target, (z_t - a * target) / s, t_end)
    assert torch.allclose(student_end, teacher_end, atol=1e-4)


def test_consistency_boundary_condition_is_the_identity_at_t0(tiny_denoiser, schedule) -> None:
    c_skip, c_out = boundary_scalings(torch.tensor([0, 1, 999]))
    assert c_skip[0] == 1 and c_out[0] == 0 and c_skip[2] < 1e-6 and abs(c_out[2] - 1) < 1e-6
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(consistency_function(schedule, tiny_denoiser, x, torch.tensor(0)), x)


def test_consistency_sampling_timesteps_stride_the_training_grid() -> None:
    assert consistency_timesteps(1000, 20, 1) == [999]
    assert consistency_timesteps(1000, 20, 2) == [999, 499]
    assert consistency_timesteps(1000, 20, 4) == [999, 759, 519, 279]


def test_every_stage_is_an_artifact_and_the_one_step_student_carries_the_whole_chains_cost(tiny_base) -> None:
    chain = Distillation().artifacts(Distillation.Params(teacher_steps=16), tiny_base)
    assert list(chain) == ["student8", "student4", "student2", "student1"]
    one_step = train.ensure(chain["student1"], progress=False)
    records = {name: zoo.find(r).record for name, r in chain.items()}
    base = zoo.find(tiny_base).record
    assert one_step.record["total_steps"] == base["steps"] + sum(r["steps"] for r in records.values())
    expected_wall = base["wall_s"] + sum(r["wall_s"] for r in records.values())
    assert one_step.record["total_wall_s"] == pytest.approx(expected_wall, abs=0.05)
    assert [s["recipe"] for s in records["student4"]["sources"]] == [chain["student8"].name]
    saved = json.loads((one_step.path / "scheduler" / "scheduler_config.json").read_text())
    assert saved["prediction_type"] == "v_prediction"


def test_paper_optimiser_anneals_each_stage_to_zero_without_ema_and_leaves_the_shipped_students_alone(
        tiny_base) -> None:
    paper = Distillation().artifacts(Distillation.Params(optimiser="paper"), tiny_base)
    matched = Distillation().artifacts(Distillation.Params(), tiny_base)
    for name, stage in paper.items():
        assert (stage.lr, stage.ema_decay) == (5e-5, 0.0) and stage.name.endswith("-paper")
        factors = [lr_factor(stage, step) for step in range(stage.steps)]
        assert factors[0] == 1.0 and factors == sorted(factors, reverse=True)
        assert factors[-1] == pytest.approx(1 / stage.steps)  # the last update is the smallest, then 0
        assert stage.key != matched[name].key
    assert paper["student4"].options["teacher"]["name"] == paper["student8"].name  # the paper chain is its own
    first = matched["student8"]
    assert "lr_schedule" not in first.options and (first.lr, first.ema_decay) == (2e-4, 0.995)
    warmup = max(1, min(200, first.steps // 10))
    assert [lr_factor(first, step) for step in (0, warmup - 1, first.steps - 1)] == [1 / warmup, 1.0, 1.0]


def test_online_target_and_pseudo_huber_loss_are_icts(tiny_base) -> None:
    params = Distillation.Params(method="consistency", target_ema=0.0, loss="pseudo_huber")
    recipe = Distillation().artifacts(params, tiny_base)["consistency"]
    assert recipe.options["target_ema"] == 0.0 and recipe.options["loss"] == "pseudo_huber"
    assert "loss" not in Distillation().artifacts(Distillation.Params(method="consistency"),
                                                  tiny_base)["consistency"].options  # l2 keeps its address
    objective = ConsistencyObjective()
    student = objective.build(recipe, (1, 8, 8), None)
    with torch.no_grad():  # move the student off the target so the comparison means something
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    loss = objective.loss(student, x0, None, torch.Generator().manual_seed(3))
    # the same draws by hand: μ = 0 makes θ⁻ the online student itself
    gen = torch.Generator().manual_seed(3)
    sch, grid = objective.schedule, torch.tensor(consistency_grid(1000, 20))
    t_next = grid[torch.randint(0, len(grid), (6,), generator=gen)]
    t_prev = torch.clamp(t_next - 20, min=0)
    x_next = sch.diffuse(x0, t_next, torch.randn(x0.shape, generator=gen))
    with torch.no_grad():
        x0_teacher, eps_teacher = sch.predict(objective.teacher, x_next, t_next)
        target = consistency_function(sch, student, sch.ddim_step(x0_teacher, eps_teacher, t_prev), t_prev)
        diff = consistency_function(sch, student, x_next, t_next) - target
    c = 0.00054 * 8  # 0.00054·√d, d = 64
    expected = ((diff.flatten(1).pow(2).sum(1) + c**2).sqrt() - c).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and loss.item() > 0


def test_a_step_count_without_a_student_is_one_config_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(TINY_CONFIG.read_text().split("[[technique]]")[0]
                      + '[[technique]]\nname = "distillation"\nsteps = [3]\n')
    result = run_cli("sweep", "--config", str(config), "--results", str(tmp_path / "r"), "--no-progress")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "bench: error: config: technique[0].steps 3 is not one of the distilled students' step counts "
        "[8, 4, 2, 1] for technique 'distillation'"]
    assert not (tmp_path / "r").exists()


def test_report_shows_each_students_distillation_cost_without_the_teachers(tiny_sweep) -> None:
    root, df, _ = tiny_sweep
    row = df[df["technique"] == "distillation"].iloc[0]
    student, teacher = row["artifacts"]["student2"], row["artifacts"]["model"]
    distill_wall = round(student["train_total_wall_s"] - teacher["train_wall_s"], 2)
    section = Distillation().report_sections(df[df["technique"] == "distillation"])[0].tables[0]
    assert section.iloc[0]["distillation wall s (all stages)"] == distill_wall > 0
    html = (root / "report.html").read_text()
    assert "distillation: training cost of each student" in html and "total wall s (with sources)" in html
