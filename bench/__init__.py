"""bench: fair quality-vs-cost benchmarks of efficiency techniques for image diffusion models."""

__version__ = "0.1.0"
