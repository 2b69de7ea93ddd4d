"""The MoE masked-diffusion backbone and its sampler."""
