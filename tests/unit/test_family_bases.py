"""The family base classes refuse, when a model or autoencoder is built, a subclass that leaves out a method every
family must define (not at its first call, in the middle of a run)."""

from __future__ import annotations

import pytest
from torch import nn

from osctl.families.autoencoders import DiffusersAutoencoder
from osctl.families.transformers import DiffusersTransformers


def test_a_family_model_without_its_call_is_refused_when_built():
    class NoCall(DiffusersTransformers):
        def sequence_parallel_attention(self, transformer, enabled):
            pass

    with pytest.raises(TypeError, match="call_transformer"):
        NoCall({"transformer": nn.Linear(2, 2)})


def test_a_family_autoencoder_without_its_normalisation_is_refused_when_built():
    class NoNormalisation(DiffusersAutoencoder):
        diffusers_class = "AutoencoderKLWan"

        def denormalise(self, latents):
            return latents

    with pytest.raises(TypeError, match="normalisation"):
        NoNormalisation(nn.Linear(2, 2))
