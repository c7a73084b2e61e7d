"""What every model family taken from diffusers shares: where its released files are, how its transformers are
called, routed and run sequence-parallel, and how a trained one is written back as a diffusers pipeline.

A family (Wan, CogVideoX, LTX-Video, HunyuanVideo) is a set of plugins: a model plugin whose
built module is a :class:`~osctl.families.transformers.DiffusersTransformers` subclass, an autoencoder
plugin and a text encoder. The modules here know no family: each plugin passes its facts in (class
names, subfolders, the points where its transformer's token sequence is split and gathered).

- :mod:`osctl.families.configs`: the recipe configs every family's model and autoencoder plugins share
  (released files or a preset, offline checks, plans, their half of the latent geometry);
- :mod:`osctl.families.autoencoders`: a family's diffusers VAE behind osctl's autoencoder protocol, with the
  family's latent normalisation;
- :mod:`osctl.families.sources`: the released diffusers layout (``model_index.json``, ``transformer/``,
  ``transformer_2/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) from a local folder or
  the Hugging Face cache (offline; never a download), and the family check of what is found there;
- :mod:`osctl.families.transformers`: one or more diffusers transformers behind osctl's model call,
  timestep experts (Wan 2.2), text conditions beyond one tensor (masks, pooled vectors), Ulysses sequence
  parallelism without forking the model code, and the weight parts a checkpoint saves;
- :mod:`osctl.families.ulysses_attention`: the all-to-alls around attention, for attention processors;
- :mod:`osctl.families.loading`: diffusers' ``from_pretrained`` without running code from the files, and a
  family's transformers loaded, fresh from a preset, or on the meta device;
- :mod:`osctl.families.pipeline_export`: ``osctl ckpt convert --to diffusers-pipeline``.
"""
