"""Distillation of the base model (the shipped ε-model on the linear schedule, or a v-model on the cosine one as the
papers' teachers are: ``model.objective``/``model.schedule``): progressive distillation (Salimans & Ho, ICLR 2022)
and consistency distillation in its latent-consistency form in DDPM time (Song et al. 2023; Luo et al. 2023).

Both live on the teacher's own discrete schedule (T = 1000, ᾱ_{-1} = 1 is clean data) and on nested trailing grids
(``DiscreteSchedule.trailing_grid``: the n-step grid is every other point of the 2n-step grid), so every target is
computed on exactly the timesteps the student later samples on.

Progressive: stage n trains an n-step student to do in one DDIM step what its teacher (the baseline with 2n DDIM
steps, then the previous student) does in two, z_t → z_t' → z_t''. The student's x-target is

    x̃ = (z_t'' − (s_t''/s_t) z_t) / (a_t'' − (s_t''/s_t) a_t),    loss = max(SNR_t, 1) · ‖x̂_θ(z_t, t) − x̃‖².

The student predicts v (x̂_0 = a_t z_t − s_t v̂): an ε-student cannot recover x̂_0 at t → T where a_t → 0.012. It
starts as a copy of its teacher's weights; at low noise v ≈ ε, so an ε-teacher's weights are a near fit there and
the first stage mostly relearns high noise (a v-teacher's student starts at its teacher's function). Every stage is
its own zoo artifact (recipe + training record). ``optimiser = "paper"`` trains each stage as the paper's
``cifar_distill.py`` does: Adam at 5e-5 annealed linearly to 0 within the stage, no EMA (the evaluated weights are the
online ones); ``"matched"`` uses the harness's students' optimiser (2e-4 after warm-up, EMA 0.995).

Consistency (LCM form): f_θ(x, t) = c_skip(t) x + c_out(t) x̂_0,θ(x, t) with c_skip = σ_d²/((10t)² + σ_d²),
c_out = 10t/√((10t)² + σ_d²), σ_d = 0.5, so f(x, 0) = x. Training pairs t_{n+1} on the grid {k−1, 2k−1, …, T−1}
with t_n = max(t_{n+1} − k, 0); x̂_{t_n} is one teacher DDIM step; the loss is ‖f_θ(x_{t_{n+1}}, t_{n+1}) −
f_θ⁻(x̂_{t_n}, t_n)‖² with θ⁻ an EMA (μ = 0.95, LCM's) of θ; ``target_ema = 0`` makes the target the online network
under stop-gradient, as the CM paper's released CIFAR-10 code and iCT do. ``loss = "pseudo_huber"`` replaces ℓ2 by
iCT's √(‖f − f⁻‖² + c²) − c per image, c = 0.00054·√d (Song & Dhariwal 2023; d = C·H·W), the learned-metric-free
stand-in for LPIPS (none exists offline for 16×16 digits that would not leak into the FID extractor). The student is
v-parameterised like the progressive one, for the same reason. Sampling: x̂_0 = f(x_T, T), and for more steps re-noise
x̂_0 to the next timestep (LCM's multistep).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from bench.claims import CellRef, Claim
from bench.model import Denoiser, load_denoiser, save_denoiser
from bench.sampling import DiscreteSchedule, StepInfo, noise_like
from bench.technique import Pipeline, ReportSection, Technique
from bench.train import Objective, register_objective
from bench.zoo import Recipe

METHODS = ("progressive", "consistency")
STUDENT_PREDICTION = "v_prediction"
SIGMA_DATA, TIMESTEP_SCALING = 0.5, 10.0  # LCM's boundary-condition constants for DDPM integer timesteps
# Training budgets as fractions of the base recipe's steps, so a test's tiny base trains tiny students. At the
# shipped 4000 steps: 1000 per progressive stage, 2000 for consistency distillation.
STAGE_FRACTION, CONSISTENCY_FRACTION = 0.25, 0.5
DISTILL_LR, DISTILL_EMA = 2e-4, 0.995
PAPER_PD_LR = 5e-5  # Salimans & Ho's cifar_distill.py: per halving, annealed linearly to 0, EMA 0
OPTIMISERS, LOSSES = ("matched", "paper"), ("l2", "pseudo_huber")
HUBER_C_PER_SQRT_DIM = 0.00054  # iCT: c = 0.00054·√d


class _DistillationObjective(Objective):
    """Shared by both methods: the teacher comes from the zoo (trained first if missing); the student starts as a
    copy of its weights with a v-output; saved and loaded as an ordinary diffusers denoiser."""

    def build(self, recipe, image_shape, num_classes):
        self.teacher = self.source(recipe.options["teacher"]).eval().requires_grad_(False)
        self.schedule = DiscreteSchedule(self.teacher.scheduler_config)
        return Denoiser(copy.deepcopy(self.teacher.net).requires_grad_(True), STUDENT_PREDICTION,
                        self.teacher.scheduler_config, self.teacher.image_shape)

    def save(self, model, directory):
        return save_denoiser(model, directory)

    def load(self, directory):
        return load_denoiser(directory)


@register_objective("progressive_distillation")
class ProgressiveObjective(_DistillationObjective):
    def build(self, recipe, image_shape, num_classes):
        student = super().build(recipe, image_shape, num_classes)
        n = int(recipe.options["student_steps"])
        self.student_grid = torch.tensor(self.schedule.trailing_grid(n))
        self.teacher_grid = torch.tensor(self.schedule.trailing_grid(2 * n))
        return student

    def loss(self, model, x0, labels, generator):
        sch = self.schedule
        i = torch.randint(0, len(self.student_grid) - 1, (x0.shape[0],), generator=generator)
        t, t_mid, t_end = self.student_grid[i], self.teacher_grid[2 * i + 1], self.student_grid[i + 1]
        z_t = sch.diffuse(x0, t, torch.randn(x0.shape, generator=generator))
        with torch.no_grad():
            target = self._teacher_two_steps(z_t, t, t_mid, t_end)
        a, s = sch.a_s(t, x0)
        x0_student = a * z_t - s * model(z_t, t)
        weight = torch.clamp(a**2 / s**2, min=1.0)  # max(SNR, 1): "truncated SNR" weighting
        return (weight * (x0_student - target) ** 2).mean()

    def _teacher_two_steps(self, z_t, t, t_mid, t_end):
        sch = self.schedule
        x0, eps = sch.predict(self.teacher, z_t, t)
        z_mid = sch.ddim_step(x0, eps, t_mid)
        x0, eps = sch.predict(self.teacher, z_mid, t_mid)
        z_end = sch.ddim_step(x0, eps, t_end)
        a_t, s_t = sch.a_s(t, z_t)
        a_e, s_e = sch.a_s(t_end, z_t)
        ratio = s_e / s_t
        return (z_end - ratio * z_t) / (a_e - ratio * a_t)


def consistency_grid(num_train_timesteps: int, skip: int) -> list[int]:
    """LCM's training timesteps {skip−1, 2·skip−1, …, T−1}, ascending."""
    return [skip * i - 1 for i in range(1, num_train_timesteps // skip + 1)]


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of the LCM boundary condition at integer DDPM timesteps ``t``: c_skip(0) = 1, c_out(0) = 0."""
    scaled = TIMESTEP_SCALING * t.float()
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2).sqrt()
    return c_skip, c_out


def consistency_function(sch: DiscreteSchedule, model: Denoiser, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """f(x, t) = c_skip(t) x + c_out(t) x̂_0(x, t), x̂_0 unclipped (the boundary condition needs the raw map)."""
    x0, _ = sch.predict(model, x, t, clip=False)
    c_skip, c_out = (c.reshape(-1, 1, 1, 1).to(x) for c in boundary_scalings(t.expand(x.shape[0])))
    return c_skip * x + c_out * x0


@register_objective("consistency_distillation")
class ConsistencyObjective(_DistillationObjective):
    def build(self, recipe, image_shape, num_classes):
        student = super().build(recipe, image_shape, num_classes)
        self.skip = int(recipe.options["skip"])
        self.target_decay = float(recipe.options["target_ema"])
        self.loss_kind = recipe.options.get("loss", "l2")
        self.huber_c = HUBER_C_PER_SQRT_DIM * math.sqrt(math.prod(image_shape))
        self.grid = torch.tensor(consistency_grid(self.schedule.num_train_timesteps, self.skip))
        self.target = copy.deepcopy(student).eval().requires_grad_(False)
        return student

    def loss(self, model, x0, labels, generator):
        sch = self.schedule
        with torch.no_grad():  # θ⁻ ← μθ⁻ + (1−μ)θ, after the previous optimiser step
            for p_target, p in zip(self.target.parameters(), model.parameters(), strict=True):
                p_target.lerp_(p, 1.0 - self.target_decay)
        t_next = self.grid[torch.randint(0, len(self.grid), (x0.shape[0],), generator=generator)]
        t_prev = torch.clamp(t_next - self.skip, min=0)
        x_next = sch.diffuse(x0, t_next, torch.randn(x0.shape, generator=generator))
        with torch.no_grad():
            x0_teacher, eps_teacher = sch.predict(self.teacher, x_next, t_next)  # the teacher's own DDIM step
            x_prev = sch.ddim_step(x0_teacher, eps_teacher, t_prev)
            target = consistency_function(sch, self.target, x_prev, t_prev)
        diff = consistency_function(sch, model, x_next, t_next) - target
        if self.loss_kind == "pseudo_huber":
            return ((diff.flatten(1).pow(2).sum(1) + self.huber_c**2).sqrt() - self.huber_c).mean()
        return (diff**2).mean()


class Distillation(Technique):
    name = "distillation"
    version = 2  # 2: bench.train and bench.store restructured beneath it, not proven to leave results unchanged
    description = ("Distilled students of the base model: progressive distillation (v-students for 8/4/2/1 steps "
                   "from a 16-step DDIM teacher) and consistency distillation (LCM form, one- and few-step).")
    contract_variants = ({"method": "consistency"}, {"method": "progressive", "optimiser": "paper"},
                         {"method": "consistency", "target_ema": 0.0, "loss": "pseudo_huber"})

    @dataclass(frozen=True)
    class Params:
        method: str = "progressive"  # progressive | consistency
        teacher_steps: int = 16  # progressive: the teacher's DDIM steps the first student halves (a power of 2)
        skip: int = 20  # consistency: the teacher's DDIM step spans this many timesteps (LCM: 20 of 1000)
        optimiser: str = "matched"  # progressive: matched (2e-4, EMA 0.995) | paper (5e-5 → 0 per stage, no EMA)
        target_ema: float = 0.95  # consistency: μ of the target network θ⁻ (LCM 0.95; CM's CIFAR-10 code, iCT: 0)
        loss: str = "l2"  # consistency: l2 | pseudo_huber (iCT)

    def validate(self, params: Params) -> None:
        if params.method not in METHODS:
            raise ValueError(f"method {params.method!r} is not one of {', '.join(METHODS)}")
        n = params.teacher_steps
        if n < 2 or n & (n - 1) or n > 256:
            raise ValueError(f"teacher_steps {n} is not a power of 2 in 2..256")
        if not 1 <= params.skip <= 100:
            raise ValueError(f"skip {params.skip} is outside 1..100")
        if params.optimiser not in OPTIMISERS:
            raise ValueError(f"optimiser {params.optimiser!r} is not one of {', '.join(OPTIMISERS)}")
        if params.loss not in LOSSES:
            raise ValueError(f"loss {params.loss!r} is not one of {', '.join(LOSSES)}")
        if not 0.0 <= params.target_ema < 1.0:
            raise ValueError(f"target_ema {params.target_ema} is outside [0, 1)")
        if params.method == "consistency" and params.optimiser != "matched":
            raise ValueError("optimiser applies to method = progressive only")
        if params.method == "progressive" and (params.loss != "l2" or params.target_ema != 0.95):
            raise ValueError("loss and target_ema apply to method = consistency only")

    def validate_steps(self, params: Params, steps: int, base_schedule: dict[str, Any]) -> None:
        if params.method == "progressive":
            counts = student_counts(params.teacher_steps)
            if steps not in counts:
                raise ValueError(f"is not one of the distilled students' step counts {counts}")
        else:
            limit = int(base_schedule.get("num_train_timesteps", 1000)) // params.skip
            if steps > limit:
                raise ValueError(f"exceeds the {limit} points of the consistency grid (skip {params.skip})")

    def artifacts(self, params: Params, base: Recipe) -> dict[str, Recipe]:
        if params.method == "consistency":
            variant = (f"-mu{params.target_ema:g}" if params.target_ema != 0.95 else "") + (
                "-huber" if params.loss != "l2" else "")
            options = {"skip": params.skip, "target_ema": params.target_ema,
                       **({"loss": params.loss} if params.loss != "l2" else {})}  # l2 keeps the shipped key
            return {"consistency": _student_recipe(base, base, f"cd{variant}", "consistency_distillation",
                                                   CONSISTENCY_FRACTION, options)}
        chain, teacher = {}, base
        paper = params.optimiser == "paper"
        for n in student_counts(params.teacher_steps):
            teacher = _student_recipe(base, teacher, f"pd{n}{'-paper' if paper else ''}", "progressive_distillation",
                                      STAGE_FRACTION, {"student_steps": n, **({"lr_schedule": "linear"} if paper
                                                                              else {})},
                                      lr=PAPER_PD_LR if paper else DISTILL_LR, ema=0.0 if paper else DISTILL_EMA)
            chain[f"student{n}"] = teacher
        return chain

    def pipeline(self, params: Params, models: dict[str, Any], steps: int) -> Pipeline:
        if params.method == "progressive":
            student = models[f"student{steps}"]
            sch = DiscreteSchedule(student.scheduler_config)
            grid = sch.trailing_grid(steps)

            def sample(gens, callback=None):
                x = noise_like(gens, student.image_shape, next(student.parameters()).device)
                return sch.ddim(student, x, grid, callback)

            info = {"sampler": "DDIM on the student's grid", "timesteps": grid[:-1]}
        else:
            student = models["consistency"]
            sch = DiscreteSchedule(student.scheduler_config)
            timesteps = consistency_timesteps(sch.num_train_timesteps, params.skip, steps)

            def sample(gens, callback=None):
                return consistency_sample(sch, student, timesteps, gens, callback)

            info = {"sampler": "consistency multistep (LCM)", "timesteps": timesteps}
        return Pipeline(sample=sample, networks={"student": student}, info=info)

    def report_sections(self, rows: Any) -> list[ReportSection]:
        import pandas as pd

        rows = rows[rows["status"] == "ok"]
        if rows.empty:
            return []
        table = []
        for _, r in rows.sort_values(["param_method", "steps"]).iterrows():
            arts = r["artifacts"] or {}
            student = arts.get("consistency") or arts.get(f"student{r['steps']}") or {}
            teacher = arts.get("model") or {}
            total, teacher_wall = student.get("train_total_wall_s"), teacher.get("train_wall_s")
            table.append({"method": r["param_method"], "steps": int(r["steps"]), "FID": r["fid"],
                          "student": student.get("recipe"),
                          "distillation steps (all stages)": _minus(student.get("train_total_steps"),
                                                                    teacher.get("train_steps")),
                          "distillation wall s (all stages)": _minus(total, teacher_wall),
                          "teacher wall s": teacher_wall})
        text = ("Distillation moves cost into training. Each student's cost counts every stage it was distilled "
                "through (the progressive 1-step student includes the 8-, 4- and 2-step stages); the teacher's own "
                "training is listed beside it. Compare the FIDs with the undistilled teacher under DDIM and "
                "DPM-Solver++ at the same NFE (step_reduction rows).")
        return [ReportSection("distillation: training cost of each student", text, tables=[pd.DataFrame(table)])]


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def student_counts(teacher_steps: int) -> list[int]:
    """The progressive students' step counts: teacher_steps/2, /4, …, 1."""
    return [teacher_steps >> k for k in range(1, int(math.log2(teacher_steps)) + 1)]


def _student_recipe(base: Recipe, teacher: Recipe, tag: str, objective: str, fraction: float,
                    options: dict[str, Any], lr: float = DISTILL_LR, ema: float = DISTILL_EMA) -> Recipe:
    return dataclasses.replace(base, name=f"{base.name}-{tag}", objective=objective,
                               steps=max(1, round(base.steps * fraction)), lr=lr, ema_decay=ema,
                               options={"teacher": teacher.to_dict(), **options})


def consistency_timesteps(num_train_timesteps: int, skip: int, steps: int) -> list[int]:
    """LCM's sampling timesteps: ``steps`` evenly strided points of the training grid, from T−1 down."""
    grid = consistency_grid(num_train_timesteps, skip)[::-1]
    return grid[::max(1, len(grid) // steps)][:steps]


def consistency_sample(sch: DiscreteSchedule, model: Denoiser, timesteps: list[int], gens: list[torch.Generator],
                       callback: Any = None) -> torch.Tensor:
    """x̂_0 = f(x_t, t) at each timestep; between them re-noise x̂_0 to the next timestep with the sample's own noise."""
    device = next(model.parameters()).device
    x = noise_like(gens, model.image_shape, device)
    for i, t in enumerate(timesteps):
        x0 = consistency_function(sch, model, x, torch.tensor(t))
        x = x0 if i == len(timesteps) - 1 else sch.diffuse(x0, timesteps[i + 1],
                                                          noise_like(gens, model.image_shape, device))
        if callback is not None:
            callback(StepInfo(i, float(t), x))
    return x


_MATCHED_RECIPE = "ours (matched budget): the ε-teacher on the linear schedule read as v, lr 2e-4 + EMA"
_PAPER_RECIPE = "paper's: a v-teacher on the cosine schedule, lr 5e-5 → 0 per stage, no EMA (1000 steps per halving)"
Distillation.claims = (
    *(Claim(f"progressive distillation's {n}-step student beats DDIM at {n} steps (Salimans & Ho 2022, CIFAR-10: "
            f"{fid} at {n} steps)", recipe, "quality", CellRef(store, "distillation", n, sel),
            CellRef(store, "step_reduction", n, {"sampler": "ddim"}))
      for n, fid in ((2, 4.51), (4, 3.00))
      for recipe, store, sel in ((_MATCHED_RECIPE, "distillation", {"method": "progressive"}),
                                 (_PAPER_RECIPE, "distillation_paper",
                                  {"method": "progressive", "optimiser": "paper"}))),
    *(Claim(f"consistency distillation beats progressive distillation at {n} step{'s' if n > 1 else ''} "
            "(Song et al. 2023, CIFAR-10: CD 3.55 at 1 step, PD 8.34)", recipe, "quality",
            CellRef(store, "distillation", n, {"method": "consistency", **sel}),
            CellRef(store, "distillation", n,
                    {"method": "progressive", **({"optimiser": pd_opt} if pd_opt else {})}))
      for n in (1, 2)
      for recipe, store, sel, pd_opt in (
          ("ours (matched budget): ε-teacher, LCM's recipe (μ = 0.95, ℓ2, DDIM teacher)", "distillation", {},
           None),
          ("v-teacher (cosine), LCM's recipe (μ = 0.95, ℓ2), against PD with the paper's optimiser",
           "distillation_paper", {"target_ema": 0.95, "loss": "l2"}, "paper"),
          ("v-teacher, μ = 0 (the CM paper's CIFAR-10 code), against PD with the paper's optimiser",
           "distillation_paper", {"target_ema": 0.0, "loss": "l2"}, "paper"),
          ("v-teacher, iCT's pseudo-Huber loss (μ = 0.95), against PD with the paper's optimiser",
           "distillation_paper", {"target_ema": 0.95, "loss": "pseudo_huber"}, "paper"))),
)
Distillation.model_kinds_reason = (
    "its students are built unconditional; guidance_distillation distils a class-conditional model (its "
    "progressive students at w = 1 are plain progressive distillation)")
