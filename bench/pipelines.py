"""Wrappers that turn a technique's pipeline into what a cell of a given model samples: conditioned (labels or
prompts by seed, the cell's guider around every call) and decoded (a latent model's images)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from bench.conditioning import Guidance, conditional_sampler
from bench.conditioning import describe as describe_conditions
from bench.errors import UserError
from bench.technique import Pipeline


def decoded_pipeline(pipe: Pipeline, decoder: torch.nn.Module) -> Pipeline:
    """A latent model's pipeline: the technique samples latents, the decode turns them into the images every metric
    sees. The decode is a network of its own (``decode``): its calls are not NFE, its FLOPs and time are kept
    apart."""

    def sample(gens: list[torch.Generator], callback: Any = None) -> torch.Tensor:
        return decoder(pipe.sample(gens, callback))

    return dataclasses.replace(pipe, sample=sample, networks={**pipe.networks, "decode": decoder},
                               info={**pipe.info, "decoder": type(getattr(decoder, "vae", decoder)).__name__})


def conditioned_pipeline(pipe: Pipeline, model: Any, guidance: Guidance,
                         prompts: list[str] | None = None) -> Pipeline:
    """The pipeline with every sampler call conditioned (labels or prompts by seed, the cell's guider) and its
    observations extended by the guided and unguided steps of the last call. A text model's prompts are encoded
    at the start of every call, by its text encoder (a network of its own: ``text_encoder``), and under guidance
    the empty prompt too, once per image, as diffusers' ``StableDiffusionPipeline`` does."""
    networks, info = pipe.networks, pipe.info
    if model.kind == "text":
        from bench import text_to_image

        if not prompts:
            raise UserError("a text-to-image model needs prompts (model.prompts)")
        encoder = model.text_encoder

        def condition(seeds: list[int], guided: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
            device = next(encoder.parameters()).device
            cond = encoder(encoder.tokens(text_to_image.prompts_for_seeds(seeds, prompts), device))
            return cond, encoder(encoder.tokens([""] * len(seeds), device)) if guided else None

        sample, observe_guidance = conditional_sampler(pipe.sample, condition, guidance)
        networks = {**networks, "text_encoder": encoder}
        info = {**info, "conditions": {"kind": "text", "num_prompts": len(prompts),
                                       "prompts_sha256": text_to_image.prompts_sha256(prompts),
                                       "prompts": text_to_image.PROMPT_RULE,
                                       **({"guidance": dataclasses.asdict(guidance)} if guidance else {})}}
    else:
        sample, observe_guidance = conditional_sampler(pipe.sample, model.num_classes, guidance)
        info = {**info, "conditions": describe_conditions(model.num_classes, guidance)}

    def observe() -> dict[str, Any]:
        return {**(pipe.observe() if pipe.observe is not None else {}), **observe_guidance()}

    return dataclasses.replace(pipe, sample=sample, observe=observe, networks=networks, info=info)
