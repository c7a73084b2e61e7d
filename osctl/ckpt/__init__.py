"""Checkpoints on disk: find out what a file or folder is (``inspect``) and move it between formats (``convert``).

Modules:

- :mod:`osctl.ckpt.headers`: safetensors headers and sharded indexes, read without torch and without
  touching tensor data (a 10 GB file is described from its first few kilobytes).
- :mod:`osctl.ckpt.detect`: which format a path holds, and which registered plugin loads its config.
- :mod:`osctl.ckpt.torch_files`: ``.pt/.pth/.bin/.ckpt`` read with ``weights_only=True`` (code-carrying
  pickles are refused unless explicitly trusted), ``hold_torch_load`` for third-party loaders (DeepSpeed,
  diffusers), and the key-layout normalisation of wrapped states.
- :mod:`osctl.ckpt.dcp_metadata`: a DCP ``.metadata`` file read through an unpickler that admits only the
  DCP metadata classes (used by ``inspect``/``convert`` and by the fsdp resume).
- :mod:`osctl.ckpt.dcp_reader`: ``torch.distributed.checkpoint.load`` for resuming, through a reader that
  never runs code from the folder.
- :mod:`osctl.ckpt.engines`: training-engine state: DeepSpeed ZeRO folders and torch.distributed.checkpoint
  (FSDP/DCP) folders, described and consolidated into one state dict without unpickling code.
- :mod:`osctl.ckpt.inspect`: the report of ``osctl ckpt inspect``.
- :mod:`osctl.ckpt.convert`: ``osctl ckpt convert``: plan, write to a temporary name, verify, rename.

Nothing here imports ``osctl_builtin`` (plugins are looked up through the registry), and torch is
imported only by the code paths that need it, so inspecting safetensors and diffusers folders stays light.
"""
