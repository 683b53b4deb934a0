"""Checkpoint conversion: PyTorch (original DDPM / iDDPM files, diffusers folders) -> Flax.

Depends on ``discovery_jax``; ``discovery_jax`` never imports this package, so
converted checkpoints load where torch is not installed.
"""
