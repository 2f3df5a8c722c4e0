"""Guidance distillation (Meng et al., CVPR 2023, "On Distillation of Guided Diffusion Models") of a
class-conditional model sampled with classifier-free guidance.

Stage one trains a student that takes the guidance scale w as an input and matches, with one evaluation, its guided
teacher's two: for w ~ U[w_min, w_max] (one w per batch), t ~ U{0..T−1}, z_t = a_t x + s_t ε,

    loss = ‖ε̂_η(z_t, t, c, w) − ε̃_w(z_t, t, c)‖²,    ε̃_w = ε̂(z_t, t, ∅) + w (ε̂(z_t, t, c) − ε̂(z_t, t, ∅)),

the target being the teacher's prediction combined by diffusers' ``ClassifierFreeGuidance`` (w in diffusers'
convention: 1 = no guidance; the paper's w is this one minus 1). The student keeps its teacher's ε-output (the paper
matches x̂; ε-matching is the same target weighted by SNR) and its weights; w enters through a zero-initialised
embedding (``bench.model.GuidanceEmbedding``) added to the time embedding (every DiT block's), so the student starts
as the unguided teacher. Any sampler then drives it at one network evaluation per step, with the cell's guidance
scale as its input.

Stage two distils the w-conditioned student progressively (Salimans & Ho 2022, as ``techniques/distillation.py``
does for the unconditional model, reusing its objective and sampler): each stage halves the steps of its teacher,
the stage-one student under DDIM at ``teacher_steps`` and then each previous student, w and the label kept as inputs
throughout, so one student per step count serves every guidance scale in [w_min, w_max].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bench.conditioning import Guidance, conditioned
from bench.sampling import DiscreteSchedule
from bench.technique import Pipeline, Technique
from bench.train import Objective, register_objective
from bench.zoo import Recipe
from techniques.distillation import (
    DISTILL_EMA,
    DISTILL_LR,
    STUDENT_PREDICTION,
    Distillation,
    ProgressiveObjective,
    _student_recipe,
    student_counts,
)
from techniques.step_reduction import SAMPLERS, make_sampler, validate_sampler

METHODS = ("guided", "progressive")
# Budgets as fractions of the base recipe's steps: at the shipped DiT's 8000, 2000 steps for stage one and 1000 per
# progressive halving (the unconditional students' 1000 per stage at a base of 4000).
GUIDED_FRACTION, STAGE_FRACTION = 0.25, 0.125


class _ConditionalStudent(Objective):
    """A student of a conditional teacher from the zoo, built from its weights with a guidance embedding; every
    teacher and student evaluation runs under the batch's labels and one guidance scale w ~ U[w_min, w_max]."""

    prediction_type: str | None = None  # the student's output; None: its teacher's

    def build(self, recipe, image_shape, num_classes):
        self.teacher = self.source(recipe.options["teacher"]).eval().requires_grad_(False)
        if not self.teacher.num_classes:
            raise ValueError(f"guidance distillation needs a class-conditional teacher; {recipe.name}'s has no classes")
        self.schedule = DiscreteSchedule(self.teacher.scheduler_config)
        self.w_range = (float(recipe.options["w_min"]), float(recipe.options["w_max"]))
        return self.teacher.derived(prediction_type=self.prediction_type, embed_guidance=True)

    def guidance(self, generator: torch.Generator) -> Guidance:
        low, high = self.w_range
        return Guidance(scale=low + (high - low) * float(torch.rand((), generator=generator)))

    def latents(self, x0: torch.Tensor) -> torch.Tensor:
        if self.teacher.decoder is None:
            return x0
        with torch.no_grad():
            return self.teacher.decoder.encode(x0)

    def save(self, model, directory):
        from bench.model import save_denoiser

        return save_denoiser(model, directory)

    def load(self, directory):
        from bench.model import load_denoiser

        return load_denoiser(directory)


@register_objective("guidance_distillation")
class GuidedStudentObjective(_ConditionalStudent):
    """Stage one: one evaluation with w as input against the teacher's guided pair."""

    def loss(self, model, x0, labels, generator):
        x0 = self.latents(x0)
        t = torch.randint(0, self.schedule.num_train_timesteps, (x0.shape[0],), generator=generator)
        z_t = self.schedule.diffuse(x0, t, torch.randn(x0.shape, generator=generator))
        with conditioned(labels, self.guidance(generator)):
            with torch.no_grad():
                target = self.teacher(z_t, t).float()
            return F.mse_loss(model(z_t, t).float(), target)


@register_objective("guided_progressive_distillation")
class GuidedProgressiveObjective(_ConditionalStudent, ProgressiveObjective):
    """Stage two: progressive distillation's loss, teacher and student both given the label and w."""

    prediction_type = STUDENT_PREDICTION

    def build(self, recipe, image_shape, num_classes):
        student = _ConditionalStudent.build(self, recipe, image_shape, num_classes)
        n = int(recipe.options["student_steps"])
        self.student_grid = torch.tensor(self.schedule.trailing_grid(n))
        self.teacher_grid = torch.tensor(self.schedule.trailing_grid(2 * n))
        return student

    def loss(self, model, x0, labels, generator):
        guidance = self.guidance(generator)
        with conditioned(labels, guidance):
            return ProgressiveObjective.loss(self, model, self.latents(x0), labels, generator)


class GuidanceDistillation(Technique):
    name = "guidance_distillation"
    version = 2  # 2: bench.train and bench.store restructured beneath it, not proven to leave results unchanged
    description = ("Guidance-distilled students of a class-conditional model (Meng et al. 2023): one evaluation per "
                   "step with the guidance scale as input (any sampler), then progressively distilled to 4/2/1 steps.")
    contract_variants = ({"method": "progressive"},)

    @dataclass(frozen=True)
    class Params:
        method: str = "guided"  # guided (stage one, any sampler and step count) | progressive (stage two students)
        w_min: float = 1.0  # the guidance scales the student learns, diffusers' convention (1 = unguided)
        w_max: float = 3.0
        sampler: str = "ddim"  # guided: one of step_reduction's samplers
        teacher_steps: int = 8  # progressive: DDIM steps of the stage-one student the first halving starts from

    def validate(self, params: Params) -> None:
        if params.method not in METHODS:
            raise ValueError(f"method {params.method!r} is not one of {', '.join(METHODS)}")
        if not 0.0 <= params.w_min < params.w_max <= 20.0:
            raise ValueError(f"guidance range [{params.w_min}, {params.w_max}] is not inside [0, 20] with w_min < "
                             "w_max")
        validate_sampler(params.sampler, 0.0, "trailing")
        n = params.teacher_steps
        if n < 2 or n & (n - 1) or n > 256:
            raise ValueError(f"teacher_steps {n} is not a power of 2 in 2..256")
        if params.method == "progressive" and params.sampler != "ddim":
            raise ValueError("sampler applies to method = guided only (the progressive students step with DDIM)")

    def validate_steps(self, params: Params, steps: int, base_schedule: dict[str, Any]) -> None:
        counts = student_counts(params.teacher_steps)
        if params.method == "progressive" and steps not in counts:
            raise ValueError(f"is not one of the distilled students' step counts {counts}")
        super().validate_steps(params, steps, base_schedule)

    def artifacts(self, params: Params, base: Recipe) -> dict[str, Recipe]:
        guided = _student_recipe(base, base, f"gd{params.w_min:g}-{params.w_max:g}", "guidance_distillation",
                                 GUIDED_FRACTION, {"w_min": params.w_min, "w_max": params.w_max})
        if params.method == "guided":
            return {"guided": guided}
        chain, teacher = {}, guided
        for n in student_counts(params.teacher_steps):
            # the first halving's teacher is the stage-one student under DDIM at teacher_steps = 2n
            teacher = _student_recipe(base, teacher, f"gd{params.w_min:g}-{params.w_max:g}-pd{n}",
                                      "guided_progressive_distillation", STAGE_FRACTION,
                                      {"student_steps": n, "w_min": params.w_min, "w_max": params.w_max},
                                      lr=DISTILL_LR, ema=DISTILL_EMA)
            chain[f"student{n}"] = teacher
        return chain

    def pipeline(self, params: Params, models: dict[str, Any], steps: int) -> Pipeline:
        if params.method == "progressive":
            pipe = Distillation().pipeline(Distillation.Params(method="progressive",
                                                               teacher_steps=params.teacher_steps), models, steps)
            return dataclasses.replace(pipe, info={**pipe.info, "guidance": "the student's input (one evaluation)"})
        student = models["guided"]
        sample = make_sampler(student, params.sampler, steps)
        return Pipeline(sample=sample, networks={"student": student},
                        info={"scheduler": SAMPLERS[params.sampler][0].__name__, "timestep_spacing": "trailing",
                              "guidance": "the student's input (one evaluation)",
                              "guidance_range": [params.w_min, params.w_max]})


GuidanceDistillation.model_kinds = ("class",)  # (it distils classifier-free guidance: labels needed)
