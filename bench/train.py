"""One training loop with pluggable objectives; produces zoo artifacts with a training record."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bench import data, zoo
from bench.errors import UserError
from bench.extractor import DigitClassifier, load_classifier, save_classifier
from bench.measure import quality
from bench.model import Decoder, Denoiser, build_network, load_denoiser, save_denoiser
from bench.provenance import provenance


class Objective:
    """A training objective: how to build the model and its loss on a batch of clean images in [-1, 1].

    ``train`` makes a fresh instance per training run, so an objective may keep state between ``build`` and ``loss``
    (a frozen teacher, a discriminator with its own optimiser, extra curves for the training record).
    """

    # The version of what the objective trains: a recipe's key includes it, so a changed loss trains a new artifact
    # instead of reusing one the old loss made. Bump it with every change that can move the trained weights.
    version = 1
    trains = True  # False: the artifact is built (e.g. imported, or fitted in closed form), not optimised
    build_wall_s = 0.0  # seconds ``build`` spent making the artifact itself (a fit): counted as its training time

    def __init__(self) -> None:
        self.out: Path | None = None  # the zoo ``train`` writes to: sources are looked up and trained there too
        self.sources: list[zoo.Artifact] = []  # what ``source`` loaded; their cost counts into the total
        # the EMA copy ``train`` keeps: the weights ``save`` writes and sweeps sample. Set before the first step and
        # updated in place after each, so an objective judges its convergence on what is shipped
        self.ema: nn.Module | None = None

    def build(self, recipe: zoo.Recipe, image_shape: tuple[int, int, int], num_classes: int | None) -> nn.Module:
        raise NotImplementedError

    def loss(self, model: nn.Module, x0: torch.Tensor, labels: torch.Tensor | None,
             generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def optimizer(self, model: nn.Module, recipe: zoo.Recipe) -> torch.optim.Optimizer:
        """The optimiser of the model's parameters (AdamW at ``recipe.lr``, no weight decay, unless an objective's
        paper says otherwise)."""
        return torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)

    def save(self, model: nn.Module, directory: Path) -> Path:
        """Write the (EMA) model into ``directory``; returns the weights file."""
        raise NotImplementedError

    def load(self, directory: Path) -> nn.Module:
        """Read back what ``save`` wrote."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """Extra fields for the training record (e.g. a discriminator's curves, whether a GAN converged)."""
        return {}

    def source(self, recipe: zoo.Recipe | dict[str, Any], progress: bool = True) -> nn.Module:
        """A trained model this training starts from or learns from (a teacher, a warm start), trained first when
        no zoo has it; its training cost counts into this artifact's total."""
        recipe = recipe if isinstance(recipe, zoo.Recipe) else zoo.Recipe.from_dict(recipe)
        model, artifact = load_artifact(recipe, progress=progress, out=self.out)
        self.sources.append(artifact)
        return model


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator: ``@register_objective("my-loss")`` makes the objective available to recipes."""

    def wrap(cls: type[Objective]) -> type[Objective]:
        OBJECTIVES[name] = cls
        zoo.OBJECTIVE_VERSIONS[name] = int(cls.version)
        return cls

    return wrap


class DiffusionObjective(Objective):
    """DDPM training (Ho et al. 2020, Algorithm 1): t ~ U{0..T-1}, x_t = a_t x_0 + s_t ε, MSE on the target."""

    prediction_type = "epsilon"
    decoder: Decoder | None = None  # a latent model's autoencoder (set by build; subclasses' networks have none)
    label_dropout = 0.1

    def build(self, recipe, image_shape, num_classes):
        conditional = recipe.options.get("num_classes")
        self.label_dropout = float(recipe.options.get("label_dropout", 0.1))
        if conditional and conditional != num_classes:
            raise UserError(f"recipe {recipe.name} is conditioned on {conditional} classes; dataset "
                            f"{recipe.dataset} has {num_classes or 'no labels'}")
        self.decoder = None
        if "autoencoder" in recipe.options:  # a latent model: diffusion on the frozen autoencoder's latents
            self.decoder = Decoder(self.source(recipe.options["autoencoder"]).requires_grad_(False).eval())
            with torch.no_grad():
                image_shape = tuple(self.decoder.encode(torch.zeros(1, *image_shape)).shape[1:])
        net = build_network(recipe.options.get("arch", "unet"),
                            {"sample_size": image_shape[-1], "in_channels": image_shape[0],
                             "out_channels": image_shape[0], **recipe.network}, conditional)
        return Denoiser(net, self.prediction_type, recipe.schedule, image_shape, conditional, self.decoder)

    def loss(self, model, x0, labels, generator):
        from diffusers import DDPMScheduler

        sched = DDPMScheduler.from_config(model.scheduler_config)
        if self.decoder is not None:
            with torch.no_grad():
                x0 = self.decoder.encode(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        x_t = sched.add_noise(x0, noise, t)
        targets = {"epsilon": noise, "sample": x0, "v_prediction": sched.get_velocity(x0, noise, t)}
        target = targets[self.prediction_type]
        if getattr(model, "num_classes", None):  # Ho & Salimans: the null class for the label with probability p_uncond
            dropped = torch.rand(x0.shape[0], generator=generator) < self.label_dropout
            labels = torch.where(dropped, model.null_class, labels)
            return F.mse_loss(model(x_t, t, labels), target)
        return F.mse_loss(model(x_t, t), target)

    def save(self, model, directory):
        return save_denoiser(model, directory)

    def load(self, directory):
        return load_denoiser(directory)


@register_objective("epsilon")
class EpsilonObjective(DiffusionObjective):
    prediction_type = "epsilon"


@register_objective("v_prediction")
class VObjective(DiffusionObjective):
    prediction_type = "v_prediction"


@register_objective("autoencoder")
class AutoencoderObjective(Objective):
    """A diffusers ``AutoencoderKL`` for latent diffusion (Rombach et al. 2022): reconstruction MSE plus a small KL
    term (``kl_weight``; LDM's 1e-6 keeps the latent close to a deterministic code). Saved with LDM's rescaling: the
    config's ``scaling_factor`` is 1 / the standard deviation of the latent means of 2048 training images, so the
    diffusion model sees unit-variance latents."""

    def build(self, recipe, image_shape, num_classes):
        from diffusers import AutoencoderKL

        self.recipe, self.kl_weight = recipe, float(recipe.options.get("kl_weight", 1e-6))
        return AutoencoderKL(in_channels=image_shape[0], out_channels=image_shape[0], sample_size=recipe.resolution,
                             **recipe.network)

    def loss(self, model, x0, labels, generator):
        posterior = model.encode(x0).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        return F.mse_loss(model.decode(z).sample, x0) + self.kl_weight * posterior.kl().mean() / x0[0].numel()

    def save(self, model, directory):
        images = data.load(self.recipe.dataset, "train", self.recipe.resolution).images[:2048]
        with torch.no_grad():
            latents = model.encode(images.float() / 127.5 - 1.0).latent_dist.mean
        self.latent_std = float(latents.std())
        model.register_to_config(scaling_factor=1.0 / self.latent_std)
        model.save_pretrained(directory, safe_serialization=True)
        return directory / "diffusion_pytorch_model.safetensors"

    def load(self, directory):
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(directory, low_cpu_mem_usage=False).eval()

    def record(self):
        return {"latent_std": round(self.latent_std, 5)}


@register_objective("classifier")
class ClassifierObjective(Objective):
    """Cross-entropy on labels: the offline feature extractor for quality metrics."""

    def build(self, recipe, image_shape, num_classes):
        if num_classes is None:
            raise ValueError(f"dataset {recipe.dataset} has no labels to train a classifier on")
        return DigitClassifier(channels=image_shape[0], num_classes=num_classes, **recipe.network)

    def loss(self, model, x0, labels, generator):
        return F.cross_entropy(model(x0), labels)

    def save(self, model, directory):
        return save_classifier(model, directory)

    def load(self, directory):
        return load_classifier(directory)


@register_objective("simclr")
class ContrastiveObjective(ClassifierObjective):
    """SimCLR (Chen et al. 2020): two augmented views of each image, NT-Xent on the projection head. The offline
    extractor for data without labels: it needs none, and its features must be invariant to what the augmentations
    change (small crops, shifts, contrast) while telling images with different content apart, which is what FID's
    features should do. Features for FID are taken before the projection head, as SimCLR evaluates them."""

    def build(self, recipe, image_shape, num_classes):
        self.temperature = float(recipe.options["temperature"])
        return DigitClassifier(channels=image_shape[0], **recipe.network)

    def loss(self, model, x0, labels, generator):
        from bench.extractor import augment, nt_xent

        return nt_xent(model(augment(x0, generator)), model(augment(x0, generator)), self.temperature)


@register_objective("pretrained")
class PretrainedObjective(Objective):
    """A user's pretrained diffusers model imported into the zoo as it is (no optimiser steps), once its weights are
    proven to be those its recipe names; techniques then distil it, warm-start from it or copy its architecture."""

    trains = False

    def build(self, recipe, image_shape, num_classes):
        from bench import pretrained

        source = recipe.options["source"]
        now = pretrained.describe.__wrapped__(source)  # hashed afresh: the folder may have changed since
        if now["weights_sha256"] != recipe.options["weights_sha256"]:
            raise UserError(f"model.pretrained {source!r} changed since its recipe was made (weights sha256 "
                            f"{now['weights_sha256'][:12]}, recipe {recipe.options['weights_sha256'][:12]}); rerun")
        if tuple(now["image_shape"]) != tuple(image_shape) and not recipe.options.get("random_weights"):
            raise UserError(f"model.pretrained {source!r} takes {_shape(now['image_shape'])} images; dataset "
                            f"{recipe.dataset} at resolution {recipe.resolution} gives {_shape(image_shape)}")
        return load_denoiser(pretrained.resolve(source))

    def save(self, model, directory):
        return save_denoiser(model, directory)

    def load(self, directory):
        return load_denoiser(directory)


def _shape(shape) -> str:
    return "×".join(str(int(v)) for v in shape)


@torch.enable_grad()  # callers may sit inside no_grad (a sweep that finds an artifact missing)
def train(recipe: zoo.Recipe, out: Path, progress: bool = True) -> zoo.Artifact:
    """Train ``recipe`` and write its artifact (weights, recipe, training record) atomically under ``out``."""
    objective = OBJECTIVES[recipe.objective]()
    objective.out = out
    images = data.load(recipe.dataset, "train", recipe.resolution)
    x_all = images.images.float() / 127.5 - 1.0
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    model = objective.build(recipe, images.shape, images.num_classes).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    objective.ema = ema
    steps = recipe.steps if objective.trains else 0
    if steps:
        opt = objective.optimizer(model, recipe)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(recipe, step))
    curve, window, start = [], [], time.perf_counter()
    bar = tqdm(range(steps), desc=f"train {recipe.name}", unit="step", disable=not progress, mininterval=2)
    for step in bar:
        idx = torch.randint(0, len(x_all), (recipe.batch,), generator=generator)
        labels = images.labels[idx] if images.labels is not None else None
        loss = objective.loss(model, x_all[idx], labels, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        _ema_update(ema, model, min(recipe.ema_decay, (1 + step) / (10 + step)))
        window.append(loss.item())
        if len(window) == 50 or step == steps - 1:
            curve.append([step + 1, sum(window) / len(window)])
            bar.set_postfix(loss=f"{curve[-1][1]:.4f}")
            window = []
    wall = time.perf_counter() - start + objective.build_wall_s
    if not all(math.isfinite(v) for _, v in curve):
        raise RuntimeError(f"training {recipe.name} diverged (non-finite loss)")
    return _write_artifact(recipe, objective, ema, out, wall, curve, len(x_all), steps)


LR_SCHEDULES = ("warmup", "linear")


def lr_factor(recipe: zoo.Recipe, step: int) -> float:
    """The learning rate at optimiser step ``step`` (0-based) as a fraction of ``recipe.lr``: a linear warm-up over
    min(200, steps/10) steps, then constant; or, with ``options["lr_schedule"] = "linear"``, annealed linearly from
    ``lr`` to 0 over the run without warm-up (progressive distillation's per-stage schedule)."""
    kind = recipe.options.get("lr_schedule", "warmup")
    if kind == "linear":
        return max(0.0, 1.0 - step / recipe.steps)
    if kind != "warmup":
        raise ValueError(f"recipe {recipe.name}: lr_schedule {kind!r} is not one of {', '.join(LR_SCHEDULES)}")
    warmup = max(1, min(200, recipe.steps // 10))
    return min(1.0, (step + 1) / warmup)


def ensure(recipe: zoo.Recipe, out: Path | None = None, progress: bool = True) -> zoo.Artifact:
    """The artifact for ``recipe``, training it (and saying so) when no zoo has it; inside ``provided_by``, the
    provider's artifact."""
    provider = zoo.current_provider()
    if provider is not None:
        return provider(recipe)
    found = zoo.find(recipe, zoo.search_roots(out))
    if found is not None:
        return found
    from filelock import FileLock

    target = out or zoo.user_zoo()
    target.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target / f".{recipe.folder_name}.lock")):
        found = zoo.find(recipe, zoo.search_roots(out))  # trained by another process while this one waited
        if found is not None:
            return found
        doing = (f"training it ({recipe.steps} steps, batch {recipe.batch})" if OBJECTIVES[recipe.objective].trains
                 else "importing it")
        print(f"zoo: no artifact for recipe {recipe.name} ({recipe.key}); {doing} into {target}", flush=True)
        return train(recipe, target, progress=progress)


def load_artifact(recipe: zoo.Recipe, progress: bool = True, out: Path | None = None) -> tuple[nn.Module, zoo.Artifact]:
    """The trained model of ``recipe`` (trained first, into ``out`` or the user's zoo, when no zoo has it) and its
    artifact."""
    artifact = ensure(recipe, out=out, progress=progress)
    return OBJECTIVES[recipe.objective]().load(artifact.path), artifact


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=False):
            e.lerp_(p, 1.0 - decay)
        for e, b in zip(ema.buffers(), model.buffers(), strict=False):
            e.copy_(b)


def _source_costs(steps: int, wall: float, sources: list[zoo.Artifact]) -> dict[str, Any]:
    """The artifacts this one was trained from and the total cost including theirs (each counted once)."""
    if not sources:
        return {}
    summaries = {a.recipe.key: a.summary() for a in sources}
    return {"sources": list(summaries.values()),
            "total_steps": steps + sum(s["train_total_steps"] or 0 for s in summaries.values()),
            "total_wall_s": round(wall + sum(s["train_total_wall_s"] or 0 for s in summaries.values()), 2)}


def _write_artifact(recipe, objective, model, out: Path, wall: float, curve: list, n_train: int,
                    steps: int) -> zoo.Artifact:
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{recipe.folder_name}-", dir=out))
    weights = objective.save(model, tmp)
    record = {
        "recipe_key": recipe.key,
        "steps": steps,
        "batch": recipe.batch,
        "train_images": n_train,
        "wall_s": round(wall, 2),
        "final_loss": curve[-1][1] if curve else None,
        "loss_curve": curve,
        "weights_file": str(weights.relative_to(tmp)),
        "weights_sha256": zoo.weights_sha256(weights),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hardware": provenance("cpu"),
        "command": "python -m bench train",
        **({"dataset_content_sha256": content} if (content := data.identity(recipe.dataset)) else {}),
        **({"imported_from": recipe.options.get("source"), "source_weights_sha256": recipe.options.get(
            "weights_sha256")} if not objective.trains else {}),
        **_source_costs(steps, wall, objective.sources),
        **objective.record(),
    }
    (tmp / zoo.RECIPE_FILE).write_text(json.dumps(recipe.to_dict(), indent=1, sort_keys=True))
    (tmp / zoo.RECORD_FILE).write_text(json.dumps(record, indent=1))
    final = out / recipe.folder_name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return zoo.Artifact(recipe, final)


def resolve_extractor(choice: str, dataset: str, resolution: int, steps: int = 1500,
                      progress: bool = True) -> quality.Extractor:
    """The extractor ``quality.extractor`` names for (dataset, resolution): a zoo extractor (trained if missing;
    ``auto`` is the classifier on labelled data, the SimCLR encoder on unlabelled) or ``inception-v3-compat``."""
    from bench import recipes

    recipe = recipes.extractor_recipe(choice, dataset, resolution, steps)
    if recipe is None:
        return quality.inception()
    return quality.zoo_extractor(ensure(recipe, progress=progress))
