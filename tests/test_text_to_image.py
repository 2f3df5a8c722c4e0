"""Text-to-image pipelines: a Stable Diffusion-style folder as the base model, prompts by seed, the text encoder's
cost apart from the denoiser's and the decode's, CLIP score where CLIP weights are present, and the U-Net
accelerations (DeepCache, token merging) on the tiny random-weight pipeline, whose cells carry no quality."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import store, text_to_image
from tests.conftest import ROOT, run_cli

CONFIG = ROOT / "tests" / "data" / "tiny_text_to_image.toml"


def _local_clip(folder: Path) -> Path:
    """A random-weight CLIP model saved as a hub folder would be: the stand-in for openai/clip-vit-base-patch32."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    tokenizer = text_to_image._byte_tokenizer()
    config = CLIPConfig(text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37,
                                     "num_hidden_layers": 2, "num_attention_heads": 4, "bos_token_id": 0,
                                     "eos_token_id": 1, "pad_token_id": 1},
                        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                                       "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
                        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_to_image")
    clip = _local_clip(root / "clip")
    config = root / "t2i.toml"
    config.write_text(CONFIG.read_text().replace("[quality]\n", f"[quality]\nclip_model = '{clip}'\n"))
    result = run_cli("sweep", "--config", str(config), "--results", str(root / "results"), "--report",
                     str(root / "report.html"), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    return root, store.load(root / "results"), result.stdout


def _cell(df, technique: str, scale: float = 2.0):
    rows = df[(df["technique"] == technique) & (df["guidance"].map(lambda g: g["scale"]) == scale)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_the_tiny_pipeline_is_a_diffusers_pipeline(tmp_path) -> None:
    from diffusers import StableDiffusionPipeline

    from bench.model import load_denoiser

    folder = text_to_image.build_tiny_pipeline(tmp_path / "tiny")
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    image = pipe("a red apple", num_inference_steps=2, height=16, width=16, output_type="pt").images
    assert image.shape == (1, 3, 16, 16)
    model = load_denoiser(folder)
    assert model.kind == "text" and model.image_shape == (4, 8, 8) and model.decoder is not None
    # prompts are tokenized for real: two prompts give two different token rows, not two <|endoftext|>
    ids = model.text_encoder.tokens(["a red apple", "seven"])
    assert ids.shape == (2, 77) and not torch.equal(ids[0], ids[1]) and (ids[:, 1] > 1).all()


def test_text_encoder_denoiser_and_decode_costs_are_stored_apart(text_sweep) -> None:
    _, df, stdout = text_sweep
    unguided, guided = _cell(df, "step_reduction", 1.0), _cell(df, "step_reduction", 2.0)
    for row, encodes in ((unguided, 1), (guided, 2)):  # the prompts, and the empty prompt under guidance
        assert row["status"] == "ok"
        calls = row["nfe_by_network"]
        assert calls == {"text_encoder": encodes, "model": row["nfe"], "decode": 1}
        stages = row["flops_per_image_by_stage"]
        assert set(stages) == {"text_encoder", "denoiser", "decode"}
        assert sum(stages.values()) == pytest.approx(row["flops_per_image"])
        assert stages["text_encoder"] == encodes * row["flops_per_call_by_network"]["text_encoder"]
        assert row["text_encoder_ms_per_image"] > 0 and row["decode_ms_per_image"] > 0
        assert row["info"]["conditions"]["kind"] == "text" and row["info"]["conditions"]["num_prompts"] == 10
    assert guided["nfe"] == 2 * unguided["nfe"] == 8
    assert "Costs by stage per image" in stdout


def test_random_weights_give_costs_and_no_quality(text_sweep) -> None:
    root, df, _ = text_sweep
    ok = df[df["status"] == "ok"]
    assert ok["quality_skipped"].str.startswith("random weights").all()
    assert "fid" not in ok or ok["fid"].isna().all()
    page = (root / "report.html").read_text()
    costs = page.split("id='costs'>")[1].split("<h2")[0]
    assert costs.count("<tr>") == len(ok) and "text encoder MFLOPs" in costs and "VAE decode ms" in costs
    assert "<svg" not in page.split("id='fronts'>")[1].split("id='cells'")[0]  # no quality front drawn


def test_clip_score_with_local_weights_and_its_reason_without(text_sweep, tmp_path) -> None:
    _, df, _ = text_sweep
    row = _cell(df, "step_reduction", 2.0)
    assert 0.0 <= row["clip_score"] <= 100.0 and pd.isna(row["clip_score_skipped"])
    images = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    missing = text_to_image.clip_score(images, ["a", "b"], str(tmp_path / "no-clip"))
    assert missing["clip_score"] is None and "no-clip" in missing["clip_score_skipped"]


def test_unet_accelerations_run_on_the_text_pipeline_and_count_what_ran(text_sweep) -> None:
    _, df, _ = text_sweep
    plain = _cell(df, "step_reduction", 2.0)
    for technique in ("deepcache", "token_merging"):
        row = _cell(df, technique)
        assert row["status"] == "ok", row.get("error")
        assert row["nfe"] == plain["nfe"]  # NFE keeps counting full evaluations
        fraction = row["flops_ran_fraction_by_network"]["model"]
        assert 0 < fraction < 1
        assert row["flops_per_image_by_stage"]["denoiser"] == pytest.approx(
            fraction * plain["flops_per_image_by_stage"]["denoiser"])
    deep = _cell(df, "deepcache")
    # interval 2: evaluations 0 and 2 of each branch run every ResNet, 1 and 3 only the shallow branch
    assert 0.5 < deep["observations"]["resnets_computed_fraction"] < 1
    assert deep["info"]["cache"]["library"] == "DeepCache"
    assert _cell(df, "token_merging")["info"]["token_merging"]["use_rand"] is False
    skipped = _cell(df, "feature_cache")
    assert skipped["status"] == "skipped" and "UNet2DConditionModel" in skipped["reason"]


def test_deepcache_without_skipping_is_the_plain_sampler() -> None:
    """At cache_interval 1 every evaluation is full: the images are plain DDIM's, guidance's two calls included."""
    from bench import pretrained, registry
    from bench.conditioning import Guidance
    from bench.model import load_denoiser
    from bench.pipelines import conditioned_pipeline
    from bench.sampling import generators

    model = load_denoiser(pretrained.resolve(pretrained.TINY_TEXT_TO_IMAGE))
    prompts = text_to_image.read_prompts(text_to_image.DEFAULT_PROMPTS)
    images = []
    for name, params in (("step_reduction", {}), ("deepcache", {"cache_interval": 1})):
        technique = registry.get(name)
        pipe = technique.pipeline(technique.Params(**params), {"model": model}, 4)
        pipe = conditioned_pipeline(pipe, model, Guidance(scale=3.0), prompts)
        with torch.no_grad():
            images.append(pipe.sample(generators([0, 1]), None))
    assert torch.equal(images[0], images[1])


@pytest.mark.parametrize("model, error", [
    ('conditioning = "text"', "needs model.pretrained"),
    ('prompts = "p.txt"', "model.prompts applies to text models"),
    ('pretrained = "bench:tiny-text-to-image"\nconditioning = "text"\nprompts = "empty.txt"', "holds no prompt"),
    ('pretrained = "bench:tiny-text-to-image"', "set model.conditioning = 'text'"),
])
def test_bad_text_configs_fail_in_one_line(tmp_path, model, error) -> None:
    (tmp_path / "empty.txt").write_text("\n \n")
    config = tmp_path / "bad.toml"
    config.write_text(f'name = "bad"\n[model]\n{model}\n[[technique]]\nname = "step_reduction"\nsteps = [2]\n')
    result = run_cli("sweep", "--config", str(config), "--results", str(tmp_path / "r"), "--dry-run", cwd=tmp_path)
    assert result.returncode == 2 and error in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
