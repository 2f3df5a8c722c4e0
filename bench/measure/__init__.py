"""Measurements: FLOPs, latency, memory, energy and quality — one module each, value objects from raw samples."""
