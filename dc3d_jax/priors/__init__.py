"""Diffusion priors as (frozen params, pure apply functions)."""
