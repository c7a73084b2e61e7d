"""The typed schema of a YAML recipe.

Fixed sections (``data``, ``diffusion``, ``train``, ``parallel``, ``sample``) are strict pydantic
models: unknown keys are errors. Component sections (``model``, ``autoencoder``, ``text_encoder``,
``refiner``) name a plugin with ``name`` and pass every other key to that plugin's own config model,
which is just as strict (checked by ``osctl.recipe.validate``). Field descriptions here are the one
place recipe keys are documented; ``osctl recipe show --schema`` prints them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Precision = Literal["fp32", "bf16", "fp16"]


class Section(BaseModel):
    """Base of every fixed recipe section: unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ComponentSection(BaseModel):
    """A plugin choice: ``name`` selects the plugin, the other keys are the plugin's options."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str = Field(description="registered plugin name (see `osctl plugins list`)")

    @property
    def options(self) -> dict[str, Any]:
        """The plugin-specific keys of this section."""
        return dict(self.model_extra or {})


class DataFilters(Section):
    """Thresholds on the optional quality scores of a record (records without the score pass)."""

    min_aesthetic: float | None = Field(None, description="drop records whose `aesthetic` is below this")
    min_tech: float | None = Field(None, description="drop records whose `tech` score is below this")
    min_motion: float | None = Field(None, description="drop records whose `motion` score is below this")
    max_motion: float | None = Field(None, description="drop records whose `motion` score is above this")


class CaptionSettings(Section):
    """How captions are turned into training text (reference §1.4)."""

    cfg: float = Field(0.1, ge=0.0, le=1.0, description="probability of replacing the caption by '' (CFG dropout)")
    clean: bool = Field(True, description="apply the reference caption cleaner (lower-casing, URL/HTML removal, ...)")
    support_chinese: bool = Field(True, description="keep CJK ideographs when cleaning (the mT5 setting)")
    aesthetic_high: float = Field(5.75, description="score at or above which a high-aesthetic sentence is added")
    aesthetic_low: float = Field(4.25, description="score at or below which a low-aesthetic sentence is added")
    high_video: list[str] | None = Field(None, description="high-aesthetic sentences for videos (default: the reference's)")
    low_video: list[str] | None = Field(None, description="low-aesthetic sentences for videos (default: the reference's)")
    high_image: list[str] | None = Field(None, description="high-aesthetic sentences for images (default: the reference's)")
    low_image: list[str] | None = Field(None, description="low-aesthetic sentences for images (default: the reference's)")


class CacheSettings(Section):
    """Precomputed latents and text embeddings (`osctl data cache`): whether training uses them and how
    they are stored. ``data.cache: auto`` is short for ``data.cache: {mode: auto}``."""

    mode: Literal["auto", "require", "off"] = Field(
        "auto", description="auto: train from a valid cache when there is one (a stale one is ignored with a "
        "warning); require: refuse to train without a valid cache; off: always encode on the fly")
    dir: Path | None = Field(None, description="cache folder (default: <index folder>/cache, next to the index)")
    views: int = Field(1, ge=1, le=64, description="draws stored for samples whose frames are chosen at random "
                       "(a temporal crop); deterministic samples always store one")
    dtype: Literal["bf16", "fp32"] = Field("bf16", description="storage dtype of latents and embeddings "
                                           "(fp32: training from the cache equals encoding on the fly bit for bit)")
    shard_samples: int = Field(64, ge=1, description="samples per shard file (the unit of resume and of "
                               "distribution over ranks)")

    @model_validator(mode="before")
    @classmethod
    def _mode_shorthand(cls, value: Any) -> Any:
        """``data.cache: require`` means ``{mode: require}``; YAML reads a bare ``off`` as false."""
        if isinstance(value, (str, bool)):
            value = {"mode": value}
        if isinstance(value, dict) and value.get("mode") is False:
            value = {**value, "mode": "off"}
        return value


class DataSection(Section):
    """Where the data is and the frame / resolution rules that bucket it (reference §2-4)."""

    data: Path | None = Field(None, description="data.txt listing `DATA_ROOT,ANNOTATION` lines (seed flag --data)")
    index_dir: Path | None = Field(
        None, description="folder of the sample index written by `osctl data bucket` (default: <output_dir>/index)"
    )
    num_frames: int = Field(93, ge=1, description="frames per training clip: k x the autoencoder's temporal stride "
                            "+ 1 (4k+1 for WF-VAE), checked against the components' latent geometry")
    train_fps: float = Field(24.0, gt=0, description="fps clips are resampled to")
    speed_factor: float = Field(1.0, ge=1.0, description="compress up to this much more source time into a clip")
    drop_short_ratio: float = Field(
        1.0, ge=0.0, le=1.0, description="probability of dropping a clip shorter than num_frames (1 = fixed length)"
    )
    min_frames: int = Field(29, ge=1, description="fewest frames a video sample may have after snapping to a "
                                                  "whole number of latent frames (4k+1 for a 4x temporal autoencoder)")
    too_long_factor: float = Field(
        5.0, gt=0, description="drop a clip longer than this many times the source span a sample needs"
    )
    default_fps: float | None = Field(
        None, gt=0, description="fps assumed for a video whose annotation has none; unset drops such videos "
        "(the reference assumes 24 when indexing and then fails when reading)"
    )
    crop_before_sizing: bool = Field(
        True, description="size a record from its `crop` box; false sizes it from the full `resolution` as the "
        "reference does, which mis-sizes cropped records outside force mode"
    )
    keep_empty_captions: bool = Field(
        False, description="keep records whose caption is empty or blank (the reference keeps them and trains them "
        "as unconditional samples); by default they are dropped"
    )
    force_resolution: bool = Field(False, description="every sample exactly max_height x max_width (crop + resize)")
    resolution_mode: Literal["force", "area", "absolute"] | None = Field(
        None,
        description="force, area (max_hxw/min_hxw) or absolute (max/min height/width); default: force if "
        "force_resolution, area if max_hxw is set, else absolute",
    )
    max_height: int | None = Field(320, gt=0, description="force: target height; absolute: bounding-box height")
    max_width: int | None = Field(240, gt=0, description="force: target width; absolute: bounding-box width")
    min_height: int | None = Field(None, gt=0, description="absolute mode: drop samples smaller than this height")
    min_width: int | None = Field(None, gt=0, description="absolute mode: drop samples smaller than this width")
    max_hxw: int | None = Field(None, gt=0, description="area mode: largest pixel area (height x width)")
    min_hxw: int | None = Field(None, gt=0, description="area mode: smallest pixel area (default max_hxw // 4)")
    hw_stride: int = Field(32, gt=0, description="height and width are floored to multiples of this")
    max_aspect: float = Field(2.0, ge=1.0, description="drop samples whose h/w or w/h exceeds this")
    group_data: bool = Field(False, description="batches hold one bucket shape (needed for variable shapes)")
    min_bucket_batches: float = Field(
        4.0, ge=0.0, description="drop buckets holding fewer samples than this many global batches (0 keeps all)"
    )
    seed: int = Field(42, description="seed of the data decisions (short-clip drops, order) shared by every rank")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes per rank")
    leftover: Literal["drop", "pad"] = Field(
        "drop", description="samples of a bucket that do not fill a global batch: dropped for that epoch, or padded "
        "with duplicates from the same bucket"
    )
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0, description="share of bad media above which training stops")
    max_retries: int = Field(8, ge=0, description="replacement attempts per bad sample before the item fails")
    decode_timeout_s: float | None = Field(60.0, gt=0, description="time limit for decoding one sample")
    sampler_order: Literal["osctl", "reference"] = Field(
        "osctl", description="reference: the reference sampler's order (for comparisons; shapes may differ across ranks)"
    )
    filters: DataFilters = Field(default_factory=DataFilters)
    captions: CaptionSettings = Field(default_factory=CaptionSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)

    @property
    def effective_resolution_mode(self) -> str:
        """The resolution mode after applying the default rule."""
        if self.resolution_mode is not None:
            return self.resolution_mode
        if self.force_resolution:
            return "force"
        return "area" if self.max_hxw is not None else "absolute"

    @property
    def effective_min_hxw(self) -> int | None:
        """``min_hxw``, defaulting to ``max_hxw // 4`` as the reference does."""
        if self.min_hxw is not None or self.max_hxw is None:
            return self.min_hxw
        return self.max_hxw // 4

    @model_validator(mode="after")
    def _check_rules(self) -> DataSection:
        # num_frames against the autoencoder's temporal stride: osctl.recipe.validate (the latent geometry)
        mode = self.effective_resolution_mode
        if mode == "force" and (self.max_height is None or self.max_width is None):
            raise ValueError("force resolution needs max_height and max_width")
        if mode == "area" and self.max_hxw is None:
            raise ValueError("area resolution mode needs max_hxw")
        if mode == "absolute" and (self.max_height is None or self.max_width is None):
            raise ValueError(
                "absolute resolution mode needs max_height and max_width (or set max_hxw for area mode, "
                "or force_resolution: true)"
            )
        min_hxw = self.effective_min_hxw
        if self.max_hxw is not None and min_hxw is not None and self.max_hxw < min_hxw:
            raise ValueError(f"max_hxw must be >= min_hxw ({min_hxw}), got {self.max_hxw}")
        for low, high in (("min_height", "max_height"), ("min_width", "max_width")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{low} must be <= {high} ({hi}), got {lo}")
        return self


class DiffusionSection(Section):
    """The training objective and noise schedule (reference §5.4); samplers inherit it."""

    objective: Literal["ddpm", "flow_matching"] = Field("ddpm", description="DDPM noise prediction or rectified flow")
    num_train_timesteps: int = Field(1000, gt=0)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    beta_start: float = Field(1e-4, gt=0)
    beta_end: float = Field(0.02, gt=0)
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    rescale_betas_zero_snr: bool = Field(False, description="rescale betas to zero terminal SNR")
    snr_shift_scale: float | None = Field(
        None, gt=0, description="DDPM: divide the noise table's SNR by this factor before the zero-SNR rescale, as "
        "CogVideoX's schedulers do (3.0 for CogVideoX 2B/5B, 1.0 for 1.5); unset: DDPMScheduler's table"
    )
    snr_gamma: float | None = Field(None, gt=0, description="min-SNR loss weighting gamma (5.0 in the release)")
    noise_offset: float = Field(0.0, ge=0.0)
    stratified_timesteps: bool = Field(True, description="per-rank stratified timestep draws (reference v1.3.1)")
    weighting_scheme: Literal["logit_normal", "sigma_sqrt", "mode", "cosmap", "none"] = Field(
        "logit_normal", description="flow matching only: timestep density"
    )
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    token_shift: tuple[float, float, float, float] | None = Field(
        None, description="flow matching, logit_normal: [base_tokens, max_tokens, base_shift, max_shift]: the mean "
        "of the timestep draw is base_shift at base_tokens transformer tokens per sample and grows linearly to "
        "max_shift at max_tokens, replacing logit_mean (LTX-Video's trainer: [1024, 4096, 0.95, 2.05])"
    )
    flow_shift: float = Field(
        1.0, gt=0, description="flow matching only: timestep shift of the training noise levels, sigma -> "
        "shift*sigma / (1 + (shift-1)*sigma) (diffusers' FlowMatchEulerDiscreteScheduler shift; Wan: 3.0 to 5.0)"
    )


class LoraSettings(Section):
    """A LoRA adapter trained on a frozen base model (``train.lora``), through ``peft``."""

    rank: int = Field(16, ge=1, description="adapter rank r (the width of the low-rank update)")
    alpha: float = Field(16.0, gt=0, description="scale numerator: the update is multiplied by alpha / rank")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter's input while training")
    target_modules: list[str] | None = Field(
        None, description="module names (suffixes) that get an adapter; default: the model plugin's attention and "
        "feed-forward projections (`osctl plugins show MODEL`)"
    )
    init: Literal["default", "gaussian", "random"] = Field(
        "default", description="adapter initialisation: default (A Kaiming-uniform, B zero: starts as the base "
        "model), gaussian (A normal, B zero), random (both random: the adapter changes the output from the start)"
    )


class OffloadSettings(Section):
    """Frozen transformer blocks kept in host memory and streamed to the device (``train.offload``)."""

    blocks: int | Literal["auto"] = Field(
        "auto", description="how many transformer blocks live on the CPU: a number, or auto (as many as the memory "
        "plan needs to fit the device; none when it already fits)"
    )

    @field_validator("blocks")
    @classmethod
    def _non_negative(cls, value: Any) -> Any:
        if isinstance(value, int) and value < 0:
            raise ValueError(f"blocks must be auto or a number >= 0, got {value}")
        return value


#: the attention kernels a run may force (osctl.utils.attention)
AttentionBackend = Literal["auto", "flash", "cudnn", "efficient", "math"]


class CompileSettings(Section):
    """``torch.compile`` of each transformer block (``train.compile``; see :mod:`osctl.train.compile`)."""

    mode: Literal["default", "max-autotune-no-cudagraphs"] = Field(
        "default", description="inductor's mode (max-autotune-no-cudagraphs: slower to compile, tunes matmuls)"
    )
    dynamic: bool = Field(
        False, description="one graph with symbolic shapes for every bucket (true) instead of one graph per bucket "
        "shape (false: usually faster kernels, more compiling)"
    )
    warmup: bool = Field(True, description="compile every bucket shape before the first step, so the first epoch "
                                           "does not stop to compile")


class LoraRef(Section):
    """An adapter applied at sampling time: ``PATH`` or ``PATH:SCALE``, or ``{path, scale}``."""

    path: Path = Field(description="pytorch_lora_weights.safetensors, a folder holding it, or a LoRA checkpoint-N")
    scale: float = Field(1.0, description="multiplier of the adapter's update (0 turns it off)")


def parse_lora_ref(value: Any) -> Any:
    """``"PATH"`` / ``"PATH:SCALE"`` -> ``{"path", "scale"}`` (a trailing ``:number`` is the scale)."""
    if isinstance(value, str | Path):
        text = str(value)
        head, sep, tail = text.rpartition(":")
        if sep and head:
            try:
                return {"path": head, "scale": float(tail)}
            except ValueError:
                pass
        return {"path": text}
    return value


class TrainSection(Section):
    """Optimisation, precision, EMA, checkpoints and logging (reference §5)."""

    output_dir: Path = Field(Path("out"), description="where checkpoints, logs and the index go")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps to train (seed: max_train_steps)")
    num_epochs: int | None = Field(None, gt=0, description="passes over the data when max_steps is not set")
    train_batch_size: int = Field(1, gt=0, description="samples per rank per micro-step")
    gradient_accumulation_steps: int = Field(1, gt=0)
    optimizer: str = Field("adamw", description="adamw or any torch.optim class name")
    learning_rate: float = Field(1e-4, gt=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_weight_decay: float = Field(1e-2, ge=0)
    adam_epsilon: float = Field(1e-15, gt=0, description="the reference's unusually small epsilon")
    lr_scheduler: str = Field("constant", description="a diffusers scheduler name (constant, cosine, linear, ...)")
    lr_warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: Precision = "bf16"
    vae_fp32: bool = Field(False, description="keep the autoencoder in fp32")
    gradient_checkpointing: bool | Literal["off", "full", "selective"] | None = Field(
        None, description="activation checkpointing: off, full (each block recomputed in backward; true), selective "
        "(recomputed except attention, whose outputs are kept); null follows model.gradient_checkpointing"
    )
    compile: CompileSettings | None = Field(
        None, description="torch.compile each transformer block: true, or {mode, dynamic, warmup}; every bucket "
        "shape is compiled before the first step"
    )
    attention_backend: AttentionBackend = Field(
        "auto", description="the SDPA kernel attention uses: auto (torch picks per call), or one forced"
    )
    use_ema: bool = True
    ema_decay: float = Field(0.9999, gt=0, lt=1)
    ema_start_step: int = Field(0, ge=0)
    offload_ema: bool = False
    checkpointing_steps: int = Field(500, gt=0)
    checkpoints_total_limit: int | None = Field(None, gt=0)
    pretrained: str | None = Field(None, description="weights to start from (.safetensors, diffusers folder, .pt)")
    resume_from_checkpoint: str | None = Field(None, description="'latest' or a checkpoint-N path; wins over pretrained")
    log_interval: int = Field(10, gt=0)
    seed: int = Field(1234, description="seed of model init, noise and timesteps")
    validation_steps: int | None = Field(None, gt=0, description="sample validation prompts every N steps")
    validation_prompts: list[str] = Field(default_factory=list)
    lora: LoraSettings | None = Field(
        None, description="train a LoRA adapter on the frozen base model instead of every weight ({rank, alpha, "
        "dropout, target_modules, init}); checkpoints then hold the adapter alone"
    )
    base_dtype: Literal["fp32", "bf16", "fp8_e4m3", "fp8_e5m2"] = Field(
        "fp32", description="storage dtype of the frozen base weights (needs train.lora); bf16/fp8 are upcast layer by "
        "layer for compute"
    )
    offload: OffloadSettings | None = Field(
        None, description="keep frozen transformer blocks on the CPU and stream them in ({blocks: N | auto}; needs "
        "train.lora)"
    )
    trackers: list[ComponentSection] = Field(
        default_factory=list, description="experiment trackers fed on rank 0 besides logs/metrics.jsonl (always "
        "written): names, or {name: ..., <options>} (e.g. [tensorboard]); see `osctl plugins list --kind tracker`"
    )

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_switch(cls, value: Any) -> Any:
        """``true`` is compile with the defaults, ``false`` no compile."""
        if isinstance(value, bool):
            return {} if value else None
        return value

    @field_validator("trackers", mode="before")
    @classmethod
    def _tracker_names(cls, value: Any) -> Any:
        """Accept a bare name, a list of names, or ``{name: ..., <options>}`` entries."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="after")
    def _frozen_base_options(self) -> TrainSection:
        if self.lora is None:
            for key, active in (("base_dtype", self.base_dtype != "fp32"), ("offload", self.offload is not None)):
                if active:
                    raise ValueError(f"{key} applies to the frozen base of a LoRA run; set train.lora or drop "
                                     f"train.{key}")
        return self


class ParallelSection(Section):
    """How training is spread over processes (reference §5.8, §5.11)."""

    strategy: str = Field("auto", description="strategy plugin: auto (single or ddp), single, ddp, fsdp, deepspeed")
    zero_stage: Literal[2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    offload_optimizer: bool = False
    offload_params: bool = False
    sp_size: int = Field(1, ge=1, description="sequence-parallel group size (Ulysses)")
    train_sp_batch_size: int = Field(1, ge=1, description="micro-batch inside a sequence-parallel group")
    nproc_per_node: int | None = Field(None, ge=1, description="processes per node when osctl launches itself")
    nnodes: int = Field(1, ge=1)
    timeout_s: float = Field(600.0, gt=0, description="collective timeout; a stuck rank fails instead of hanging")
    deepspeed_config: dict[str, Any] = Field(
        default_factory=dict, description="deepspeed strategy: engine config keys merged over osctl's (the reference's "
        "zero2/zero3 settings), e.g. {zero_optimization: {stage3_param_persistence_threshold: 0}}"
    )

    # sp_size against the process count and the model's heads: osctl.recipe.validate (the parallel layout)


class SampleSection(Section):
    """Sampling defaults (reference §7)."""

    prompts: list[str] = Field(default_factory=list)
    prompts_file: Path | None = None
    negative_prompt: str | None = Field(None, description="default: the reference's negative prompt")
    num_frames: int = Field(93, ge=1, description="k x the autoencoder's temporal stride + 1 (4k+1 for WF-VAE)")
    height: int = Field(352, gt=0, description="a multiple of the autoencoder's spatial stride x the patch size")
    width: int = Field(640, gt=0, description="a multiple of the autoencoder's spatial stride x the patch size")
    fps: int = Field(18, gt=0, description="fps of the written mp4")
    guidance_scale: float = Field(7.5, ge=0)
    guidance_scale_2: float | None = Field(
        None, ge=0, description="guidance of a model's second (low-noise) expert, e.g. Wan 2.2 A14B's; default: "
        "guidance_scale"
    )
    num_sampling_steps: int = Field(100, gt=0)
    sample_method: str = Field("EulerAncestralDiscrete", description="sampler plugin name")
    sampler_options: dict[str, Any] = Field(default_factory=dict, description="extra options for the sampler")
    seed: int = 42
    num_samples_per_prompt: int = Field(1, ge=1)
    batch_size: int = Field(1, ge=1, description="videos denoised together in one pipeline call (same size and "
                            "settings); each keeps its own seed, so the videos match batch_size 1 up to rounding")
    max_sequence_length: int = Field(512, gt=0)
    sp: bool = Field(False, description="all ranks work on each sample (sequence parallel)")
    dtype: Precision = "bf16"
    enable_tiling: bool = False
    cpu_offload: bool = Field(False, description="text encoder on the CPU, autoencoder on the GPU only to decode")
    clean_captions: bool = Field(False, description="apply the training caption cleaner to prompts")
    save_latents: bool = Field(False, description="also write each sample's final latents (.latents.safetensors)")
    compile: bool = Field(False, description="torch.compile each transformer block (the first step of each video "
                                             "size compiles it; later videos of that size reuse it)")
    attention_backend: AttentionBackend = Field(
        "auto", description="the SDPA kernel attention uses: auto (torch picks per call), or one forced"
    )
    loras: list[LoraRef] = Field(
        default_factory=list, description="LoRA adapters merged into the model for sampling: PATH or PATH:SCALE "
        "entries (or {path, scale})"
    )
    output_dir: Path = Path("samples")

    @field_validator("loras", mode="before")
    @classmethod
    def _lora_refs(cls, value: Any) -> Any:
        if isinstance(value, str | Path):
            value = [value]
        return [parse_lora_ref(item) for item in value] if isinstance(value, list) else value

    # sizes against the latent geometry: osctl.sample.sizes, when `osctl sample` starts (prompts may override them)


class Recipe(Section):
    """A whole recipe; ``extends`` is resolved by the loader before validation."""

    seed: int | None = Field(None, description="shortcut: sets train.seed when given")
    pipeline_path: str | None = Field(
        None, description="a released diffusers pipeline (local folder or hub id, read offline) that fills every "
        "component's source: model, autoencoder and text encoder keys the recipe leaves unset"
    )
    model: ComponentSection = Field(default_factory=lambda: ComponentSection(name="opensora_v1_3"))
    autoencoder: ComponentSection = Field(default_factory=lambda: ComponentSection(name="wfvae"))
    text_encoder: ComponentSection = Field(default_factory=lambda: ComponentSection(name="t5"))
    refiner: ComponentSection = Field(default_factory=lambda: ComponentSection(name="none"))
    data: DataSection = Field(default_factory=DataSection)
    diffusion: DiffusionSection = Field(default_factory=DiffusionSection)
    train: TrainSection = Field(default_factory=TrainSection)
    parallel: ParallelSection = Field(default_factory=ParallelSection)
    sample: SampleSection = Field(default_factory=SampleSection)

    @model_validator(mode="after")
    def _apply_seed(self) -> Recipe:
        if self.seed is not None:
            self.train.seed = self.seed
        return self


COMPONENT_SECTIONS: dict[str, str] = {
    "model": "model",
    "autoencoder": "autoencoder",
    "text_encoder": "text_encoder",
    "refiner": "refiner",
}
"""Recipe section -> registry kind of the plugin it names."""
