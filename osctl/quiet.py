"""Keep third-party libraries quiet in osctl's output: their progress bars and advisory warnings
would drown the one progress display osctl shows. Errors still surface."""

from __future__ import annotations

import os


def quiet_libraries() -> None:
    """Silence Hugging Face progress bars and info/warning logs, and DeepSpeed's accelerator probe on CPU."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # FSDP2 and DeepSpeed call these collectives on every step; torch's deprecation notice repeats each time
    import warnings

    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` "
                            r"is deprecated", category=FutureWarning)
    try:
        import huggingface_hub.utils

        huggingface_hub.utils.disable_progress_bars()
    except ImportError:  # pragma: no cover - a dependency
        pass
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - a dependency
        pass
    try:
        import diffusers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - a dependency
        pass
