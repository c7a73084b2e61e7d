"""Frozen transformer blocks kept in host memory and streamed to the device (``train.offload``).

The frozen parameters of the last N blocks (a LoRA run's base; the adapter stays on the device) live on
the CPU, one host buffer of exactly their size per block (:class:`HostSlab`), page-locked when the device is
a GPU; on the device each holds an empty placeholder. A lean load reads them straight into host memory, and
offloading happens before the strategy moves the model, so the device never holds the whole model; the
offloader copies each block into its buffer and lets the loaded tensors go, one block at a time. A block's
forward pre-hook copies its weights in (on a side CUDA stream, prefetching the next offloaded block while
this one computes), and its forward hook drops them again. Backward needs them once more:

- without gradient checkpointing, a saved-tensors hook replaces every saved tensor that is one of the
  block's weights (or a view of one) by a small marker, and brings the block back when backward unpacks
  the first of them (dropping it once the last is unpacked), so no weight copy waits on the device for
  backward;
- with gradient checkpointing nothing of a block is saved in forward; backward re-runs the block's
  forward, whose pre-hook brings the weights back.

On a CPU the "device" and the host are the same memory, so nothing is saved, but the code path is the
same: every forward copies the weights in and releases them after, which the tests check.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from osctl.errors import ConfigError
from osctl.train.activations import block_modules

SUPPORTED_STRATEGIES = ("single", "ddp")
#: each weight starts at a multiple of this many bytes inside its block's host buffer (any dtype's alignment)
WEIGHT_ALIGNMENT = 256
#: host buffers are whole pages of their own, so page-locking one never touches another's pages
PAGE_BYTES = 4096
#: host buffers page-locked with CUDA, kept for the life of the process: registered memory must not be freed
#: while registered, and offloaded weights live as long as the run
_REGISTERED: list[torch.Tensor] = []
_log = logging.getLogger(__name__)


class HostSlab:
    """The frozen weights of one offloaded block in one host buffer of exactly their size (rounded to whole pages),
    page-locked with ``cudaHostRegister`` when the device is a GPU, so its copies in are asynchronous.

    Why not ``Tensor.pin_memory()``: torch's caching host allocator rounds every pinned allocation up to a power of
    two (a 141 MB weight takes 256 MB), so offloaded weights pinned one by one can take up to twice their size in
    host memory, which the memory plan would not show."""

    def __init__(self, tensors: list[torch.Tensor], *, pin: bool) -> None:
        offsets, size = [], 0
        for tensor in tensors:
            offsets.append(size)
            size += -(-tensor.numel() * tensor.element_size() // WEIGHT_ALIGNMENT) * WEIGHT_ALIGNMENT
        self.buffer = _page_aligned_buffer(size)
        self.views: list[torch.Tensor] = []
        with torch.no_grad():
            for tensor, offset in zip(tensors, offsets, strict=True):
                nbytes = tensor.numel() * tensor.element_size()
                view = self.buffer[offset:offset + nbytes].view(tensor.dtype).view(tensor.shape)
                view.copy_(tensor)
                self.views.append(view)
        self.pinned = pin and _page_lock(self.buffer)


def _page_aligned_buffer(size: int) -> torch.Tensor:
    """``size`` bytes (rounded up to whole pages) of host memory starting on a page boundary, in pages no other
    allocation shares."""
    rounded = -(-size // PAGE_BYTES) * PAGE_BYTES
    raw = torch.empty(rounded + PAGE_BYTES, dtype=torch.uint8)
    start = -raw.data_ptr() % PAGE_BYTES
    return raw[start:start + rounded]


def _page_lock(buffer: torch.Tensor) -> bool:
    """Page-lock ``buffer`` for the GPU (``cudaHostRegister``: exactly its pages); False, with a warning, where CUDA
    refuses (the copies in are then synchronous, the results the same)."""
    if buffer.numel() == 0:
        return False
    cudart = torch.cuda.cudart()
    error = cudart.cudaHostRegister(buffer.data_ptr(), buffer.numel(), 0)
    if error != cudart.cudaError.success:
        _log.warning("train.offload: could not page-lock %d MiB of host memory (%s); offloaded blocks are copied "
                     "in synchronously", buffer.numel() >> 20, error)
        return False
    _REGISTERED.append(buffer)
    return True


@dataclass
class _Marker:
    """What a saved weight (or view of one) becomes while its block is offloaded."""

    block: int
    index: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


@dataclass
class _Block:
    params: list[torch.nn.Parameter]
    homes: list[torch.Tensor]  # views of ``slab``
    slab: HostSlab
    onloaded: bool = False
    pending: int = 0  # markers saved in forward and not yet unpacked in backward
    ready: Any = None  # CUDA event of a prefetch in flight
    ptrs: set[int] = field(default_factory=set)


class BlockOffloader:
    """Streams the frozen weights of ``blocks`` between host memory and ``device`` (see the module docstring)."""

    def __init__(self, blocks: list[torch.nn.Module], device: torch.device, *, track_saved: bool) -> None:
        self.device = torch.device(device)
        self.track_saved = track_saved
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.blocks: list[_Block] = []
        self.onloads = 0  # how many times a block was brought in (tests and benchmarks read it)
        self._saved_hooks: Any = None
        self._handles: list[Any] = []
        for index, module in enumerate(blocks):
            params = [p for p in module.parameters() if not p.requires_grad]
            slab = HostSlab([p.data.detach().to("cpu") for p in params], pin=self.device.type == "cuda")
            for param in params:  # the weights' own tensors go: host memory holds them once, in the slabs
                param.data = torch.empty(0, dtype=param.dtype, device=self.device)
            homes = slab.views
            self.blocks.append(_Block(params, homes, slab))
            names = {id(p): n for n, p in module.named_parameters()}
            self._handles.append(module.register_state_dict_post_hook(
                self._state_hook({names[id(p)]: h for p, h in zip(params, homes, strict=True)})))
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(index)))
            self._handles.append(module.register_forward_hook(self._post_hook(index), always_call=True))

    # --- moving weights --------------------------------------------------------------------------------
    def _copy_in(self, index: int) -> None:
        block = self.blocks[index]
        if block.onloaded:
            return
        context = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        with context:
            for param, home in zip(block.params, block.homes, strict=True):
                param.data = home.to(self.device, non_blocking=True, copy=True)
        if self.stream is not None:
            block.ready = torch.cuda.Event()
            block.ready.record(self.stream)
        block.ptrs = {param.data.untyped_storage().data_ptr() for param in block.params if param.numel()}
        block.onloaded = True
        self.onloads += 1

    def onload(self, index: int) -> None:
        """Block ``index``'s weights on the device, ready for compute."""
        self._copy_in(index)
        block = self.blocks[index]
        if block.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(block.ready)
            block.ready = None

    def release(self, index: int) -> None:
        """Drop block ``index``'s device copies (the host copies stay)."""
        block = self.blocks[index]
        for param in block.params:
            param.data = torch.empty(0, dtype=param.dtype, device=self.device)
        block.onloaded = False
        block.ptrs = set()

    def is_onloaded(self, index: int) -> bool:
        """True while block ``index``'s weights are on the device."""
        return self.blocks[index].onloaded

    # --- hooks -------------------------------------------------------------------------------------------
    @staticmethod
    def _state_hook(homes: dict[str, torch.Tensor]) -> Any:
        """``state_dict()`` shows an offloaded weight's host copy, not its empty device placeholder (exports,
        validation and fingerprints see the real weights)."""
        def hook(module: torch.nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
            for name, home in homes.items():
                key = prefix + name
                if key in state and state[key].numel() == 0:
                    state[key] = home
        return hook

    def _pre_hook(self, index: int) -> Any:
        def hook(module: torch.nn.Module, args: Any) -> None:
            self.blocks[index].pending = 0  # markers of an earlier graph that backward never unpacked are void
            self.onload(index)
            if index + 1 < len(self.blocks) and self.stream is not None:
                self._copy_in(index + 1)  # prefetch: overlaps the next block's transfer with this compute
            if self.track_saved and torch.is_grad_enabled():
                self._saved_hooks = torch.autograd.graph.saved_tensors_hooks(self._packer(index), self._unpack)
                self._saved_hooks.__enter__()
        return hook

    def _post_hook(self, index: int) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            if self._saved_hooks is not None:
                self._saved_hooks.__exit__(None, None, None)
                self._saved_hooks = None
            self.release(index)  # backward brings the block back (saved markers, or checkpointing's re-run)
        return hook

    def _packer(self, index: int) -> Any:
        block = self.blocks[index]

        def pack(tensor: torch.Tensor) -> Any:
            if tensor.device.type == "meta" or not block.ptrs:
                return tensor
            ptr = tensor.untyped_storage().data_ptr()
            if ptr not in block.ptrs:
                return tensor
            for i, param in enumerate(block.params):
                if param.numel() and param.data.untyped_storage().data_ptr() == ptr:
                    block.pending += 1
                    return _Marker(index, i, tuple(tensor.shape), tuple(tensor.stride()), tensor.storage_offset())
            return tensor
        return pack

    def _unpack(self, saved: Any) -> torch.Tensor:
        if not isinstance(saved, _Marker):
            return saved
        block = self.blocks[saved.block]
        self.onload(saved.block)
        tensor = block.params[saved.index].data.as_strided(saved.size, saved.stride, saved.offset)
        block.pending -= 1
        if block.pending == 0:
            self.release(saved.block)  # the returned view keeps its storage until the backward op is done
        return tensor

    def remove(self) -> None:
        """Put every weight back on the device and remove the hooks."""
        for handle in self._handles:
            handle.remove()
        for index in range(len(self.blocks)):
            self.onload(index)
            self.blocks[index].pending = 0


def offload_count(settings: Any, *, strategy: str, auto_blocks: int | None) -> int:
    """How many blocks ``train.offload`` (``settings``; None: no offload, 0) keeps in host memory: ``blocks``, or for
    ``auto`` the memory plan's count ``auto_blocks`` (none when no plan ran: the device memory is unknown). The one
    place the count is decided: the lean loader's placement and :func:`offload_blocks` both take it. Refuses a
    strategy that cannot offload here, before anything is built."""
    if settings is None:
        return 0
    if strategy not in SUPPORTED_STRATEGIES:
        raise ConfigError(f"train.offload needs the single or ddp strategy; the {strategy} strategy has its own "
                          "(fsdp: sharding; deepspeed: parallel.offload_params) — drop train.offload.")
    return (auto_blocks or 0) if settings.blocks == "auto" else int(settings.blocks)


def offloaded_modules(model: torch.nn.Module, count: int) -> list[torch.nn.Module]:
    """The last ``count`` transformer blocks of ``model``: the ones whose frozen weights live in host memory."""
    found = block_modules(model)
    if not found:
        raise ConfigError(f"train.offload: {type(model).__name__} names no block classes (_no_split_modules); "
                          "drop train.offload.")
    if count > len(found):
        raise ConfigError(f"train.offload.blocks {count} is more than the model's {len(found)} blocks; use at most "
                          f"{len(found)}.")
    return found[len(found) - count:]


def offloaded_keys(model: torch.nn.Module, count: int) -> set[str]:
    """State-dict keys of every parameter of the ``count`` offloaded blocks of ``model`` (built before its adapter
    is added: the adapter stays on the device): what a lean load puts in host memory, where the offloader adopts
    the tensors as they are."""
    if count == 0:
        return set()
    names = {id(module): name for name, module in model.named_modules()}
    return {f"{names[id(block)]}.{name}" for block in offloaded_modules(model, count)
            for name, _ in block.named_parameters()}


def offload_blocks(model: torch.nn.Module, count: int, *, device: torch.device, auto: bool = False) -> str:
    """Offload the last ``count`` blocks of ``model`` (:func:`offload_count`; ``auto``: the count came from the
    memory plan); attaches the offloader as ``model._osctl_offloader`` and returns a plan note. Called before the
    strategy moves the model, which then moves only what stays on the device."""
    blocks = offloaded_modules(model, count)
    if count == 0:
        return "offload: no block offloaded (" + ("the plan fits without" if auto else "blocks: 0") + ")"
    track = not getattr(model, "gradient_checkpointing", False)
    model._osctl_offloader = BlockOffloader(blocks, torch.device(device), track_saved=track)
    total = len(block_modules(model))
    return f"offload: the frozen weights of {count}/{total} blocks live on the CPU and stream in per block"
