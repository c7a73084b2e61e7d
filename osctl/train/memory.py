"""Memory a training step needs, per bucket, before anything is loaded (``osctl train --dry-run``).

Static parts are counted from the parameters (built on the meta device): weights by dtype (a LoRA run's
frozen base in ``train.base_dtype``, offloaded blocks excluded), gradients and AdamW moments of the
trainable parameters, the EMA, and the frozen text encoder and autoencoder; FSDP and DeepSpeed shard
what they shard over the world size.

Activations are not guessed from a formula: the model's own forward runs on the meta device at the
bucket's shape (no memory, no compute) while a saved-tensors hook adds up what autograd keeps for
backward, block by block (:mod:`osctl.train.activations`). Without gradient checkpointing that is the sum; with it, what stays is each
block's input plus the largest block's own activations (re-created while it back-propagates). Attention
runs through a flash-style stand-in for the trace (what GPUs and the CPU kernels do: the S x S scores are
never kept), so its workspace is counted separately. The transient peak of backward (a gradient and the
tensor it is computed from at once) is modelled as twice the largest single saved tensor.

``estimate_step_memory`` is the one function; the plan prints its result per bucket and refuses a launch
whose largest bucket exceeds the device memory, naming the knobs that would make it fit.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from osctl.train.activations import ActivationTrace, block_modules, trace_activations
from osctl.train.checkpointing import apply_checkpointing, recipe_policy

GiB = 1024**3
#: bytes per trainable parameter of AdamW state (two fp32 moments)
ADAM_BYTES = 8
#: latent-sized fp32 tensors a training step holds outside the model at the end of forward and in the loss's
#: backward (``osctl.train.loop.micro_step``): latents, noise, noisy input, target, prediction, its gradient,
#: prediction - target and its square
LATENT_COPIES = 8


@dataclass
class StepMemory:
    """Bytes one process holds at the peak of a training step on one bucket."""

    bucket: tuple[int, int, int]  # pixel frames, height, width
    tokens: int
    weights: dict[str, int] = field(default_factory=dict)  # dtype -> bytes (model on the device)
    frozen_components: int = 0  # text encoder + autoencoder
    gradients: int = 0
    optimizer: int = 0
    ema: int = 0
    activations: int = 0  # with the run's checkpointing policy
    activations_by_policy: dict[str, int] = field(default_factory=dict)  # off / full / selective
    attention: int = 0  # attention workspace of the largest attention call
    batch_tensors: int = 0  # the pixel batch and the latent-sized tensors of noising and the loss
    transient: int = 0  # backward's largest gradient + its source tensor
    offloaded: int = 0  # frozen block weights kept in host memory (train.offload)
    checkpointing: str = "off"  # the run's policy (osctl.train.checkpointing)

    @property
    def total(self) -> int:
        """The estimated peak: what stays resident, plus the larger of the saved activations (at the end of
        forward) and the gradients (at the end of backward; backward frees a block's activations as it makes
        its gradients), plus attention workspace and backward's transient."""
        return (sum(self.weights.values()) + self.frozen_components + self.optimizer + self.ema
                + max(self.activations, self.gradients) + self.batch_tensors + self.attention + self.transient)

    def line(self) -> str:
        """One plan line: the total and its parts."""
        weights = " + ".join(f"{_gb(v)} {k}" for k, v in sorted(self.weights.items()))
        parts = [f"weights {weights}", f"frozen components {_gb(self.frozen_components)}",
                 f"grads {_gb(self.gradients)}", f"optimizer {_gb(self.optimizer)}", f"EMA {_gb(self.ema)}",
                 f"activations {_gb(self.activations)} (checkpointing " + ", ".join(
                     f"{policy} {_gb(size)}" for policy, size in self.activations_by_policy.items()) + ")",
                 f"batch tensors {_gb(self.batch_tensors)}", f"attention {_gb(self.attention)}",
                 f"backward transient {_gb(self.transient)}"]
        if self.offloaded:
            parts.append(f"offloaded to host {_gb(self.offloaded)}")
        return f"{_gb(self.total)} = " + ", ".join(parts)


def _gb(value: float) -> str:
    return f"{value / GiB:.2f} GB" if value >= 0.01 * GiB else f"{value / 1024**2:.1f} MB"


# --- the meta-device trace of activations ------------------------------------------------------------------

# --- the estimate ------------------------------------------------------------------------------------------

def parameter_bytes(model: torch.nn.Module, base_dtype: str, offload_blocks: int) -> tuple[dict[str, int], int, int, int]:
    """(device weight bytes by dtype, trainable parameters, frozen bytes of offloaded blocks, bytes of the
    largest block) of ``model`` as it will train: frozen block linears in ``base_dtype``, the last
    ``offload_blocks`` blocks' frozen weights in host memory."""
    from osctl.train.frozen_base import STORAGE_DTYPES, block_linears

    storage = STORAGE_DTYPES.get(base_dtype)
    blocks = block_modules(model)
    cast = {id(layer.weight) for _, layer in block_linears(model)} if storage is not None else set()
    offloaded_params = {id(p) for block in blocks[len(blocks) - offload_blocks:] for p in block.parameters()
                        if not p.requires_grad} if offload_blocks else set()
    weights: dict[str, int] = {}
    trainable = offloaded = 0
    block_bytes: dict[int, int] = {}
    owner = {id(p): i for i, block in enumerate(blocks) for p in block.parameters()}
    for param in model.parameters():
        dtype = storage if id(param) in cast else (torch.float32 if param.requires_grad else param.dtype)
        size = param.numel() * torch.empty(0, dtype=dtype).element_size()
        if param.requires_grad:
            trainable += param.numel()
        if id(param) in owner:
            block_bytes[owner[id(param)]] = block_bytes.get(owner[id(param)], 0) + size
        if id(param) in offloaded_params:
            offloaded += size
            continue
        key = str(dtype).removeprefix("torch.")
        weights[key] = weights.get(key, 0) + size
    return weights, trainable, offloaded, max(block_bytes.values(), default=0)


def estimate_step_memory(model: torch.nn.Module, *, bucket: tuple[int, int, int], latent: tuple[int, int, int],
                         tokens: int, batch: int, channels: int, text_tokens: int, text_dim: int, recipe: Any,
                         strategy: str, world_size: int, sp_size: int = 1, frozen_components: int = 0,
                         offload_blocks: int = 0, device_type: str = "cuda", checkpointing: str = "off",
                         traces: dict[tuple[Any, ...], ActivationTrace] | None = None) -> StepMemory:
    """The peak memory of one process for a training step on ``bucket`` (see the module docstring), with
    ``checkpointing`` the run's policy (:func:`osctl.train.checkpointing.checkpointing_policy`).

    ``traces`` memoises the activation trace by everything it depends on (the model, the batch, this rank's
    latent shape, the text and the compute dtype), so callers estimating many buckets or offload counts trace
    each shape once."""
    train_cfg, parallel = recipe.train, recipe.parallel
    compute = torch.bfloat16 if train_cfg.mixed_precision in ("bf16", "fp16") else torch.float32
    base_dtype = train_cfg.base_dtype if train_cfg.lora is not None else "fp32"
    weights, trainable, offloaded, block_bytes = parameter_bytes(model, base_dtype, offload_blocks)
    if offload_blocks:  # the block computing (and on a GPU the one prefetched) have device copies
        key = next(iter(weights), "float32")
        weights[key] = weights.get(key, 0) + (2 if device_type == "cuda" else 1) * block_bytes
        if device_type != "cuda":  # on a CPU the host copies are the same memory
            weights[key] += offloaded
            offloaded = 0
    shard = world_size if strategy in ("fsdp", "deepspeed") else 1
    if strategy == "fsdp" or (strategy == "deepspeed" and parallel.zero_stage == 3):
        weights = {k: v // world_size for k, v in weights.items()}
    if strategy == "deepspeed" and compute == torch.bfloat16:  # the engine's bf16 weights beside fp32 masters
        weights["bfloat16"] = weights.get("bfloat16", 0) + trainable * 2
        weights["float32"] = weights.get("float32", 0) - trainable * 4 + trainable * 4 // shard
    memory = StepMemory(bucket=bucket, tokens=tokens, weights=weights, frozen_components=frozen_components,
                        offloaded=offloaded, checkpointing=checkpointing)
    memory.gradients = trainable * 4 // shard  # FSDP and ZeRO-2/3 reduce-scatter gradients to their shard
    memory.optimizer = trainable * ADAM_BYTES // shard
    if train_cfg.use_ema and not train_cfg.offload_ema:  # the EMA follows the parameters' sharding
        sharded = strategy == "fsdp" or (strategy == "deepspeed" and parallel.zero_stage == 3)
        memory.ema = trainable * 4 // (world_size if sharded else 1)
    frames = max(1, -(-latent[0] // sp_size))  # this rank's share of the latent frames under Ulysses
    key = (id(model), batch, frames, latent[1], latent[2], channels, text_tokens, text_dim, compute)
    trace = traces.get(key) if traces is not None else None
    if trace is None:
        with torch.device("meta"):
            traced = model.to(compute) if compute != torch.float32 else model
        trace = trace_activations(traced, batch=batch, latent=(frames, latent[1], latent[2]), channels=channels,
                                  text_tokens=text_tokens, text_dim=text_dim, dtype=compute)
        if compute != torch.float32:
            model.to(torch.float32)
        if traces is not None:
            traces[key] = trace
    memory.activations_by_policy = activations_by_policy(trace)
    memory.activations = memory.activations_by_policy[checkpointing]
    memory.attention = trace.attention * (sp_size if sp_size > 1 else 1)  # all heads' share after the all-to-all
    pixels = batch * 3 * bucket[0] * bucket[1] * bucket[2] * 4
    memory.batch_tensors = pixels + LATENT_COPIES * batch * channels * frames * latent[1] * latent[2] * 4
    memory.transient = 2 * trace.largest
    return memory


def activations_by_policy(trace: ActivationTrace) -> dict[str, int]:
    """Saved activations of a traced forward under each checkpointing policy: ``off`` keeps everything;
    ``full`` each block's input plus the largest block's own activations (re-created while it back-propagates);
    ``selective`` that plus every block's attention outputs (kept instead of recomputed)."""
    full = trace.outside + sum(trace.block_inputs) + max(trace.blocks, default=0)
    return {"off": trace.outside + sum(trace.blocks), "full": full, "selective": full + sum(trace.block_attention)}


def knobs(memory: StepMemory, recipe: Any, device_bytes: int) -> list[str]:
    """What would bring ``memory`` under ``device_bytes``: each knob the recipe does not use yet, with its saving."""
    train_cfg = recipe.train
    found = []
    over = memory.total - device_bytes
    for policy in ("selective", "full"):  # the lighter recomputation first
        saved = memory.activations - memory.activations_by_policy.get(policy, memory.activations)
        if saved > 0 and policy != memory.checkpointing:
            found.append(f"train.gradient_checkpointing: {policy} (-{_gb(saved)})")
    if train_cfg.lora is None:
        found.append("train.lora: {rank: 32} (only the adapter has gradients, optimizer state and EMA)")
    else:
        if train_cfg.base_dtype in ("fp32", "bf16"):
            found.append("train.base_dtype: fp8_e4m3 (the frozen base in 1 byte per weight)")
        if train_cfg.offload is None:
            found.append("train.offload: {blocks: auto} (frozen blocks stream in from host memory)")
    if train_cfg.use_ema and not train_cfg.offload_ema and memory.ema:
        found.append(f"train.offload_ema: true (-{_gb(memory.ema)})")
    if recipe.parallel.strategy not in ("fsdp", "deepspeed"):
        found.append("parallel.strategy: fsdp over more processes (shards weights, gradients and optimizer state)")
    found.append("parallel.sp_size: 2 or more (splits each video's activations over a sequence-parallel group)")
    found.append(f"a smaller data.max_height/max_width or data.num_frames ({_gb(over)} over)")
    return found


def parse_size(text: str) -> int:
    """``24GB``, ``80GiB``, ``512MB``, ``1.5TB`` -> bytes (GB = GiB: device memory is sold that way)."""
    import re

    from osctl.errors import UsageError

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B?)?\s*", text, re.IGNORECASE)
    if not match:
        raise UsageError(f"--device-memory {text!r} is not a size; write e.g. 24GB or 80GiB.")
    unit = (match.group(2) or "G").upper()[0]
    return int(float(match.group(1)) * 1024 ** "KMGT".index(unit) * 1024)


# --- from a recipe -----------------------------------------------------------------------------------------

def planned_model(checked: Any, registry: Any) -> torch.nn.Module:
    """The model on the meta device as it will train: gradient checkpointing and the LoRA adapter applied."""
    from osctl.build import build_model

    recipe = checked.loaded.recipe
    model = build_model(checked, registry, device="meta", dtype=torch.float32, meta=True)
    apply_checkpointing(model, recipe_policy(checked))
    if recipe.train.lora is not None:
        from osctl.train.lora import add_adapter, spec_from_settings

        declared = None
        with contextlib.suppress(Exception):
            declared = registry.get("model", recipe.model.name).spec.metadata.get("lora_target_modules")
        add_adapter(model, spec_from_settings(recipe.train.lora, model, declared))
    return model


def recipe_step_memory(checked: Any, model: torch.nn.Module, geometry: Any, *, bucket: tuple[int, int, int],
                       batch: int, text_tokens: int, strategy: str, world_size: int, sp_size: int = 1,
                       frozen_components: int = 0, offload_blocks: int = 0, device_type: str = "cuda",
                       traces: dict[tuple[Any, ...], ActivationTrace] | None = None) -> StepMemory:
    """:func:`estimate_step_memory` for a recipe's (planned) model on a pixel ``bucket`` (frames, height, width)."""
    config = model.config
    text_dim = getattr(config, "caption_channels", None) or getattr(config, "text_dim", None)  # v1.3 / diffusers
    return estimate_step_memory(
        model, bucket=bucket, latent=geometry.latent_shape(*bucket), tokens=geometry.tokens(*bucket), batch=batch,
        channels=int(config.in_channels), text_tokens=text_tokens, text_dim=int(text_dim),
        recipe=checked.loaded.recipe, strategy=strategy, world_size=world_size, sp_size=sp_size,
        frozen_components=frozen_components, offload_blocks=offload_blocks, device_type=device_type,
        checkpointing=recipe_policy(checked), traces=traces)


# --- the plan's memory section ----------------------------------------------------------------------------

@dataclass
class MemoryPlan:
    """Per-bucket estimates, the largest one, and (device memory known) whether the run fits."""

    per_bucket: list[StepMemory]
    device_bytes: int | None = None
    offload_blocks: int = 0
    host_load_peak: int = 0
    host_load_note: str = ""
    device_load_peak: int = 0  # device bytes before the first step, when above every step's (DeepSpeed)
    device_load_note: str = ""

    @property
    def largest(self) -> StepMemory:
        """The bucket with the highest peak (the one that decides whether the run fits)."""
        return max(self.per_bucket, key=lambda m: m.total)

    @property
    def peak(self) -> int:
        """The run's device peak: the largest bucket's step, or loading when that needs more."""
        return max(self.largest.total, self.device_load_peak)

    def fits(self) -> bool:
        """True when the device memory is unknown or the run's peak fits in it."""
        return self.device_bytes is None or self.peak <= self.device_bytes

    def lines(self, recipe: Any) -> list[tuple[str, str]]:
        """Plan lines: one per bucket (up to 8), the largest, host RAM while loading, and the verdict."""
        out = []
        for memory in sorted(self.per_bucket, key=lambda m: -m.total)[:8]:
            t, h, w = memory.bucket
            out.append((f"memory {t}x{h}x{w}", f"{_gb(memory.total)} per process ({memory.tokens} tokens per clip)"))
        largest = self.largest
        t, h, w = largest.bucket
        out.append(("memory peak (largest bucket)", f"{t}x{h}x{w}: {largest.line()}"))
        out.append(("host RAM while loading", f"{_gb(self.host_load_peak)} ({self.host_load_note})"))
        if self.device_load_peak > largest.total:
            out.append(("device memory while loading", f"{_gb(self.device_load_peak)} ({self.device_load_note})"))
        if self.offload_blocks:
            out.append(("offload", f"{self.offload_blocks} blocks' frozen weights in host memory "
                        f"({_gb(largest.offloaded)})"))
        if self.device_bytes is not None:
            if self.fits():
                out.append(("memory verdict", f"fits in {_gb(self.device_bytes)} ({_gb(self.device_bytes - self.peak)} "
                            "to spare)"))
            else:
                out.append(("memory verdict", self.refusal(recipe)))
        return out

    def refusal(self, recipe: Any) -> str:
        """Why the run does not fit and what would make it fit."""
        largest = self.largest
        if self.device_load_peak > largest.total:
            return (f"does not fit: loading needs {_gb(self.device_load_peak)} per process ({self.device_load_note}) "
                    f"but the device has {_gb(self.device_bytes or 0)}; try parallel.strategy: fsdp or "
                    "parallel.zero_stage: 3 with safetensors weights (each process loads only its own shards), or "
                    "train.lora")
        t, h, w = largest.bucket
        return (f"does not fit: the {t}x{h}x{w} bucket needs {_gb(largest.total)} per process but the device has "
                f"{_gb(self.device_bytes or 0)}; try " + "; ".join(knobs(largest, recipe, self.device_bytes or 0)))


def plan_memory(checked: Any, model: torch.nn.Module, *, buckets: list[tuple[int, int, int]], batch: int,
                strategy: str, world_size: int, sp_size: int, text_tokens: int, frozen_components: int,
                device_bytes: int | None, device_type: str = "cuda") -> MemoryPlan:
    """Estimate every bucket for ``model``, the recipe's model as it will train (:func:`planned_model`);
    ``train.offload.blocks: auto`` picks the fewest offloaded blocks that fit ``device_bytes`` (none when it is
    unknown). Each latent shape is traced once, however many buckets and offload counts share it."""
    recipe = checked.loaded.recipe
    geometry = checked.geometry
    traces: dict[tuple[Any, ...], ActivationTrace] = {}
    offload = recipe.train.offload
    blocks = 0 if offload is None or offload.blocks == "auto" else int(offload.blocks)

    def estimate(count: int) -> list[StepMemory]:
        return [recipe_step_memory(checked, model, geometry, bucket=bucket, batch=batch, text_tokens=text_tokens,
                                   strategy=strategy, world_size=world_size, sp_size=sp_size,
                                   frozen_components=frozen_components, offload_blocks=count,
                                   device_type=device_type, traces=traces) for bucket in buckets]

    per_bucket = estimate(blocks)
    if offload is not None and offload.blocks == "auto" and device_bytes is not None:
        total_blocks = len(block_modules(model))
        while max(m.total for m in per_bucket) > device_bytes and blocks < total_blocks:
            blocks += 1
            per_bucket = estimate(blocks)
    host_load_peak, host_load_note = host_loading(recipe, model, strategy=strategy, device_type=device_type,
                                                  world_size=world_size, offload_blocks=blocks)
    device_load, device_load_note = deepspeed_loading_peak(recipe, model, strategy=strategy, world_size=world_size,
                                                           frozen_components=frozen_components)
    return MemoryPlan(per_bucket=per_bucket, device_bytes=device_bytes, offload_blocks=blocks,
                      host_load_peak=host_load_peak, host_load_note=host_load_note, device_load_peak=device_load,
                      device_load_note=device_load_note)


def deepspeed_loading_peak(recipe: Any, model: torch.nn.Module, *, strategy: str, world_size: int,
                           frozen_components: int) -> tuple[int, str]:
    """Device bytes while a DeepSpeed run loads, and what they are (0 for other strategies: FSDP fills only each process's shards on
    the device, or shards a host copy block by block as it moves it; single/DDP hold the model whole anyway, less
    ``train.offload``'s blocks, never there). Beside the frozen components built before it: ZeRO-3 loading lean
    (:func:`osctl.train.lean_load.loads_sharded`) partitions block by block as it fills, so its partitions plus one
    float32 block; otherwise the engine gets the whole float32 model on the device before it partitions it."""
    from osctl.train.lean_load import lean_source, loads_sharded

    if strategy != "deepspeed":
        return 0, ""
    whole = sum(p.numel() * 4 for p in model.parameters())
    if loads_sharded(recipe, strategy) and lean_source(recipe) is not None:
        block = max((sum(p.numel() * 4 for p in b.parameters()) for b in block_modules(model)), default=whole)
        return frozen_components + -(-whole // max(1, world_size)) + block, (
            "ZeRO-3 partitions the model block by block as it reads it: this process's partitions plus one float32 "
            "block, beside the frozen components")
    return frozen_components + whole, ("DeepSpeed moves the whole float32 model to each device before it "
                                       "partitions it, beside the frozen components")


def host_loading(recipe: Any, model: torch.nn.Module, *, strategy: str, device_type: str = "cuda",
                 world_size: int = 1, offload_blocks: int = 0) -> tuple[int, str]:
    """Peak host bytes while the model is built and its weights read, and what they are.

    Lean loading (:mod:`osctl.train.lean_load`: safetensors weights, ``train.pretrained`` or ``model.path``) holds
    one chunk of mapped file pages (at least the largest tensor) besides the model's own memory: on a GPU, where
    the strategy loads straight on the device (single, DDP, DeepSpeed) or each process fills only its own shards
    there (FSDP, full fine-tuning and LoRA: :func:`osctl.train.lean_load.loads_sharded`), that chunk is all; with
    ``train.offload`` the frozen weights of the ``offload_blocks`` offloaded blocks (in ``train.base_dtype``) are
    read into host memory, where they stay, and the offloader then moves them into one exact-size buffer per
    block, one block at a time (:class:`osctl.train.offload.HostSlab`): those weights plus the larger of a chunk
    and a block. Sharded on the CPU, this process's float32 shards (1/``world_size`` of the model) come on top of
    the chunk; on the CPU otherwise the whole model, a LoRA base's block linears in ``train.base_dtype`` (cast as
    they are read). Otherwise the model is built in float32 on the CPU and what
    reading its weights holds at once comes on top (:func:`_loading_extra`)."""
    from osctl.train.lean_load import lean_source, loads_on_device, loads_sharded
    from osctl.train.weights import LOAD_CHUNK_BYTES

    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    source = lean_source(recipe)
    if source is None:
        return fp32_bytes + _loading_extra(recipe), ("the model built in float32 on the CPU plus what reading its "
                                                     "weights holds at once, before the strategy moves it to the device")
    largest = max((p.numel() * 4 for p in model.parameters()), default=0)
    files = [source] if source.is_file() else list(source.rglob("*.safetensors"))
    chunk = min(max(LOAD_CHUNK_BYTES, largest), max(f.stat().st_size for f in files))
    if loads_sharded(recipe, strategy):
        if device_type == "cuda":
            return chunk, (f"built and sharded on the meta device, weights read {_gb(chunk)} at a time, each "
                           "process keeping only its shards, on the device")
        shards = -(-fp32_bytes // max(1, world_size))
        return shards + chunk, (f"this process's float32 shards plus {_gb(chunk)} of the weights read at a time "
                                "(built and sharded on the meta device)")
    base_dtype = recipe.train.base_dtype if recipe.train.lora is not None else "fp32"
    if device_type == "cuda" and loads_on_device(recipe, strategy):
        if offload_blocks:
            _, _, offloaded, block = parameter_bytes(model, base_dtype, offload_blocks)
            return offloaded + max(chunk, block), (
                f"{offload_blocks} offloaded blocks' frozen weights read into host memory, where they stay: "
                f"{_gb(offloaded)} with base_dtype {base_dtype}; plus {_gb(chunk)} of the weights read at a time, "
                f"or one block ({_gb(block)}) moving into its page-locked buffer; everything else straight to the "
                "device (built on the meta device)")
        return chunk, f"built on the meta device, weights read {_gb(chunk)} at a time straight to the device"
    if base_dtype != "fp32":
        stored = sum(parameter_bytes(model, base_dtype, 0)[0].values())
        return stored + chunk, (f"the model in host memory, its frozen block linears in {base_dtype}, plus "
                                f"{_gb(chunk)} of its weights read at a time (built on the meta device, cast as read)")
    return fp32_bytes + chunk, (f"the float32 model in host memory plus {_gb(chunk)} of its weights read at a time "
                                "(built on the meta device, no random init)")


def _loading_extra(recipe: Any) -> int:
    """Host bytes loading the weights needs besides the model built in float32 on the CPU: the largest file of
    ``model.path`` (diffusers' ``from_pretrained`` reads a file at a time), and for ``train.pretrained`` one chunk of
    a safetensors file (:func:`osctl.train.weights.load_into`) or a whole torch file; 0 for a fresh preset."""
    from pathlib import Path

    from osctl.train.weights import LOAD_CHUNK_BYTES

    def files(source: Any) -> list[Path]:
        if not source:
            return []
        path = Path(str(source)).expanduser()
        if path.is_file():
            return [path]
        return list(path.glob("*.safetensors")) + list(path.glob("*.bin")) if path.is_dir() else []

    sizes = [0] + [f.stat().st_size for f in files(recipe.model.options.get("path"))]
    sizes += [min(f.stat().st_size, LOAD_CHUNK_BYTES) if f.suffix == ".safetensors" else f.stat().st_size
              for f in files(recipe.train.pretrained)]
    return max(sizes)


def device_memory(explicit: int | None) -> int | None:
    """The memory a run must fit: ``--device-memory``, else the CUDA device's total, else unknown (None)."""
    if explicit is not None:
        return explicit
    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    return None
