"""jaxdiff: pretrained diffusion UNets as priors for imaging inverse problems, in JAX/Flax."""

__version__ = "0.1.0"
