"""The shipped zoo holds every artifact the default sweep needs, intact, so a fresh machine does not train."""

import json
from pathlib import Path

from bench import config as cfg
from bench import sweep, zoo
from tests.conftest import ROOT, run_cli


def test_default_sweep_artifacts_are_shipped_and_intact() -> None:
    for recipe in sweep.needed_artifacts(cfg.load()):
        artifact = zoo.find(recipe, [zoo.SHIPPED_ZOO])
        assert artifact is not None, f"{recipe.name} ({recipe.key}) is not in {zoo.SHIPPED_ZOO}"
        zoo.require_recipe_match(artifact)
        record = artifact.record
        assert record["weights_sha256"] == zoo.weights_sha256(artifact.path / record["weights_file"])
        assert record["steps"] == recipe.steps and record["command"].startswith("python -m bench train")
        assert json.loads((artifact.path / zoo.RECIPE_FILE).read_text())["steps"] == recipe.steps


def test_bench_train_finds_every_shipped_artifact_up_to_date() -> None:
    shipped = {d.name for d in zoo.SHIPPED_ZOO.iterdir() if (d / zoo.RECORD_FILE).exists()}
    # the FID classifier, the baseline ε-model, the dual-output network, the ODE U-Net, the VAE and TDPM priors, four
    # progressive students and the consistency student; the SimCLR extractor results/extractor_simclr used; and the
    # continuous U-Net paper pair's base (two blocks per level), paper-proportioned and Euler-trained networks; the
    # papers' recipes (issue #16): the v-prediction cosine teacher, its four progressive students (the paper's
    # optimiser) and three consistency students (LCM's, mu = 0, pseudo-Huber); the dual network's gate fine-tunes
    # (paper and balanced loss), its warm start from the baseline and the two networks' time-only gates; the GAN
    # priors at T' = 300 and 500; the class-conditional models (issue #20): the DiT, the U-Net, the autoencoder and the
    # latent DiT on its latents; the DiT's and the U-Net's guidance-distilled students and their three progressive
    # students each
    assert len(shipped) == 42
    found = set()
    configs = ROOT / "bench" / "configs"
    studies = [["--config", str(configs / f"{name}.toml")]
               for name in ("ode_unet_paper", "distillation_paper", "dual_output", "truncation", "conditional",
                            "conditional_unet", "conditional_latent")]
    for override in ([], ["--set", "quality.extractor=simclr"], *studies):
        result = run_cli("train", "--no-progress", *override)
        assert result.returncode == 0 and "trained" not in result.stdout, result.stdout + result.stderr
        found |= {Path(line.split(" up to date at ")[1]).name for line in result.stdout.splitlines()
                  if " up to date at " in line}
    assert found == shipped
