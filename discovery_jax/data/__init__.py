"""Data in and out: image (and scientific) inputs, latent banks, generated datasets."""
