"""Sampling: the denoising pipeline shared by `osctl sample` and validation during training."""
