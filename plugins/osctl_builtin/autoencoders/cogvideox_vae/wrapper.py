"""The osctl-facing CogVideoX VAE: diffusers' ``AutoencoderKLCogVideoX`` with CogVideoX's latent scaling.

Scaling exactly as ``CogVideoXPipeline`` (decode) and CogVideoX's fine-tuning scripts (encode) write it
(:class:`osctl.families.autoencoders.ScaledAutoencoder`)::

    encode: z = posterior.sample() * scaling_factor          (the posterior mean with sample=False)
    decode: video = vae.decode(z / scaling_factor)

``scaling_factor`` is 1.15258426 for CogVideoX 2B/5B and 0.7 for 1.5.
"""

from __future__ import annotations

from osctl.families.autoencoders import ScaledAutoencoder


class CogVideoXVAEAutoencoder(ScaledAutoencoder):
    """``AutoencoderKLCogVideoX`` behind the osctl ``Autoencoder`` protocol; the diffusers module is ``self.vae``."""

    diffusers_class = "AutoencoderKLCogVideoX"
