"""The osctl-facing HunyuanVideo VAE: diffusers' ``AutoencoderKLHunyuanVideo`` with its latent scaling
(``scaling_factor`` 0.476986; :class:`osctl.families.autoencoders.ScaledAutoencoder`)."""

from __future__ import annotations

from osctl.families.autoencoders import ScaledAutoencoder


class HunyuanVAEAutoencoder(ScaledAutoencoder):
    """``AutoencoderKLHunyuanVideo`` behind the osctl ``Autoencoder`` protocol; the diffusers module is ``self.vae``."""

    diffusers_class = "AutoencoderKLHunyuanVideo"
