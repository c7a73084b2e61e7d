"""Precomputed latents and text embeddings (``osctl data cache``), built on one or many machines.

Training reads them instead of running the autoencoder's encoder and the text encoder at every step,
and does not build those encoders at all. Modules, in the order data flows:

- :mod:`osctl.cache.spec`: what a cache is for (index, recipe fields, component identities);
- :mod:`osctl.cache.identity`: a component's identity (plugin, configuration hash, weights hash);
- :mod:`osctl.cache.views`: which frames are stored (deterministic samples once, random ones ``views`` times);
- :mod:`osctl.cache.build`: the distributed, resumable build;
- :mod:`osctl.cache.store`: the files (safetensors shards, Arrow offset tables, prompts);
- :mod:`osctl.cache.reader`: reading one sample's posterior and text states;
- :mod:`osctl.cache.dataset`: the training dataset and collate over the cache, and the step's inputs;
- :mod:`osctl.cache.training`: ``data.cache: auto | require | off`` for ``osctl train``;
- :mod:`osctl.cache.inspect`: ``osctl data cache inspect``.

The posterior draw itself is :class:`osctl.latent_moments.LatentMoments`, shared with the autoencoders.
"""
