"""discovery_jax: tuning-free latent discovery of new domains in frozen diffusion models (JAX/Flax)."""

from setuptools import find_packages, setup

setup(
    name="discovery_jax",
    version="0.1.0",
    description="Discovery and expansion of new domains within frozen diffusion models, in JAX/Flax",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["discovery_jax", "discovery_jax.*", "convert", "convert.*"]),
    include_package_data=True,
    package_data={"discovery_jax": ["assets/*", "assets/**/*"]},
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "ml_collections==1.1.0",
        "absl-py==2.5.1",
        "numpy==2.4.6",
        "scipy==1.17.1",
        "pillow==13.0.0",
        "matplotlib==3.11.2",
        "scikit-learn==1.9.1",
        "astropy==8.0.2",
        "tensorflow-datasets==4.9.10",
        "array_record==0.8.6",
        # An undeclared dependency of tensorflow-datasets' array_record path.
        "importlib_resources",
        "safetensors==0.8.0",
    ],
    extras_require={
        # Only `convert` and the parity tests need torch. Pin it: any other version
        # (or an unpinned torch) pulls a multi-GB CUDA build on these machines.
        "torch": ["torch==2.13.0", "diffusers==0.42.1"],
        "test": ["pytest"],
    },
)
