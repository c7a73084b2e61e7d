"""`osctl sample`: text-to-video sampling on one process, many (prompts spread) or all on one video (--sp)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from osctl.cli._options import SetOpt
from osctl.cli._output import console, err_console, escape, warn
from osctl.errors import UsageError
from osctl.parallel.launch import reporting_errors_to_launcher

Opt = typer.Option


@reporting_errors_to_launcher()  # a worker's error reaches the launcher's summary
def sample(
    recipe: Annotated[Path | None, Opt("--recipe", "-r", help="YAML recipe (components and `sample` defaults).")] = None,
    overrides: SetOpt = None,
    checkpoint: Annotated[Path | None, Opt("--checkpoint", help="A training checkpoint-N folder (or an output dir: its newest checkpoint): model_ema + recipe.")] = None,
    no_ema: Annotated[bool, Opt("--no-ema", help="With --checkpoint, use model/ instead of model_ema/.")] = False,
    model_path: Annotated[str | None, Opt("--model-path", help="Diffusers model folder (seed: --model_path).")] = None,
    ae_path: Annotated[str | None, Opt("--ae-path", help="Autoencoder folder (seed: --ae_path).")] = None,
    text_encoder_name_1: Annotated[str | None, Opt("--text-encoder-name-1", help="Text encoder id or folder.")] = None,
    caption_refiner: Annotated[str | None, Opt("--caption-refiner", help="Local refiner LM folder (enables `llm`).")] = None,
    prompt: Annotated[list[str] | None, Opt("--prompt", "-p", help="A prompt (repeatable).")] = None,
    prompts: Annotated[Path | None, Opt("--prompts", help="Prompt file: .txt one per line, or .jsonl with overrides.")] = None,
    negative_prompt: Annotated[str | None, Opt("--negative-prompt", help="Default: the reference negative prompt.")] = None,
    num_frames: Annotated[int | None, Opt("--num-frames", help="Frames: k x the autoencoder's temporal stride + 1 "
                                      "(4k+1 for WF-VAE).")] = None,
    height: Annotated[int | None, Opt("--height", help="A multiple of the autoencoder's spatial stride x the patch "
                                      "size (16 for v1.3).")] = None,
    width: Annotated[int | None, Opt("--width", help="As --height.")] = None,
    num_sampling_steps: Annotated[int | None, Opt("--num-sampling-steps", help="Default 100.")] = None,
    guidance_scale: Annotated[float | None, Opt("--guidance-scale", help="Default 7.5.")] = None,
    sample_method: Annotated[str | None, Opt("--sample-method", help="Sampler plugin; default EulerAncestralDiscrete.")] = None,
    seed: Annotated[int | None, Opt("--seed")] = None,
    num_samples_per_prompt: Annotated[int | None, Opt("--num-samples-per-prompt")] = None,
    batch_size: Annotated[int | None, Opt("--batch-size", help="Videos denoised together (same settings); seeds unchanged.")] = None,
    fps: Annotated[int | None, Opt("--fps", help="Frame rate of written MP4s.")] = None,
    dtype: Annotated[str | None, Opt("--dtype", help="fp32, bf16 or fp16.")] = None,
    output_dir: Annotated[Path | None, Opt("--output-dir", "-o", help="Where videos and sidecars go.")] = None,
    grid: Annotated[bool, Opt("--grid", help="Also write one grid video of all samples.")] = False,
    enable_tiling: Annotated[bool, Opt("--enable-tiling", help="Autoencoder temporal tiling (long clips).")] = False,
    cpu_offload: Annotated[bool, Opt("--cpu-offload", help="Text encoder on the CPU; autoencoder on the GPU only to decode.")] = False,
    lora: Annotated[list[str] | None, Opt("--lora", help="A LoRA adapter merged for sampling: PATH[:SCALE] "
                                          "(repeatable; a pytorch_lora_weights.safetensors, its folder or a LoRA "
                                          "checkpoint-N).")] = None,
    sp: Annotated[bool, Opt("--sp", help="All processes work on each sample (sequence parallel).")] = False,
    nproc_per_node: Annotated[int | None, Opt("--nproc-per-node", help="Start this many processes.")] = None,
    nnodes: Annotated[int, Opt("--nnodes")] = 1,
    node_rank: Annotated[int, Opt("--node-rank")] = 0,
    rdzv_endpoint: Annotated[str | None, Opt("--rdzv-endpoint", help="HOST:PORT shared by all nodes.")] = None,
) -> None:
    """Sample videos from text prompts.

    Examples:

      [bold]osctl sample --model-path ckpt/any93x640x640 --ae-path ckpt/vae --text-encoder-name-1 google/mt5-xxl --prompt "a corgi on the beach" --num-frames 93 --height 352 --width 640[/]

      [bold]osctl sample --recipe recipes/sample-v1.3.yaml --prompts prompts.txt --nproc-per-node 8[/]

      [bold]osctl sample --checkpoint out/checkpoint-2000 --prompts prompts.txt[/]

      [bold]osctl sample --recipe recipes/sample-v1.3.yaml --lora out/checkpoint-500:0.8 --prompt "a corgi"[/]
    """
    from osctl.parallel.launch import LaunchOptions, relaunch

    launch = LaunchOptions(nproc_per_node, nnodes, node_rank, rdzv_endpoint)
    if launch.wanted:
        raise typer.Exit(relaunch(launch))

    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.sample.run import SampleRequest, run_sampling

    sets = list(overrides or [])
    recorded = None
    source: dict[str, object] = {}
    base_weights = None
    loras = list(lora or [])
    if checkpoint is not None and _is_lora_checkpoint(checkpoint):
        recipe_file, adapter, base_weights, recorded = _lora_checkpoint_inputs(checkpoint, no_ema)
        recipe = recipe or recipe_file
        loras.insert(0, str(adapter))
        source = {"checkpoint": str(checkpoint), "adapter": str(adapter)}
    elif checkpoint is not None:
        recipe_file, weights, recorded = _checkpoint_inputs(checkpoint, no_ema)
        recipe = recipe or recipe_file
        sets = [f"model.path={weights}", *sets]
        source = {"checkpoint": str(checkpoint), "weights": str(weights)}
    if loras:
        import json

        sets.append(f"sample.loras={json.dumps(loras)}")
    flag_sets = {
        "model.path": model_path, "autoencoder.path": ae_path, "text_encoder.name_or_path": text_encoder_name_1,
        "sample.negative_prompt": negative_prompt, "sample.num_frames": num_frames, "sample.height": height,
        "sample.width": width, "sample.num_sampling_steps": num_sampling_steps,
        "sample.guidance_scale": guidance_scale, "sample.sample_method": sample_method, "sample.seed": seed,
        "sample.num_samples_per_prompt": num_samples_per_prompt, "sample.batch_size": batch_size,
        "sample.fps": fps, "sample.dtype": dtype,
        "sample.output_dir": output_dir,
    }
    sets += [f"{key}={_quote(value)}" for key, value in flag_sets.items() if value is not None]
    if caption_refiner is not None:
        sets += ["refiner.name=llm", f"refiner.path={_quote(caption_refiner)}"]
    if enable_tiling:
        sets.append("sample.enable_tiling=true")
    if sp:
        sets.append("sample.sp=true")
    if cpu_offload:
        sets.append("sample.cpu_offload=true")
    registry = default_registry()
    checked = check_recipe(load_recipe(recipe, sets), registry)
    for message in checked.warnings:
        warn(message)
    cfg = checked.loaded.recipe.sample
    if cfg.sp and cfg.num_frames == 1:
        raise UsageError("--sp splits the time axis and needs --num-frames > 1; drop --sp for images.")
    request = SampleRequest(prompts=list(prompt or []), prompts_file=prompts, grid=grid,
                            recorded_diffusion=recorded, source=source, base_weights=base_weights)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from osctl.parallel.dist import shutdown

    columns = (TextColumn("{task.description}", markup=False),  # the description holds the prompt
               BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=False) as progress:
        records = run_sampling(checked, registry, request, progress=progress)
    for record in records:
        if record["file"]:
            console.print(f"wrote {escape(Path(cfg.output_dir) / record['file'])}  (seed {record['seed']})")
    shutdown()


def _quote(value: object) -> str:
    """A ``--set`` value that YAML reads back as the same string/number."""
    if isinstance(value, str | Path):
        import json

        return json.dumps(str(value))
    return str(value)


def _checkpoint_inputs(folder: Path, no_ema: bool) -> tuple[Path, Path, dict[str, object] | None]:
    """The recipe, the weights folder and the recorded diffusion settings of a training checkpoint."""
    import yaml

    from osctl.train.checkpoint import is_complete, latest_checkpoint

    if not is_complete(folder):  # a training output folder: take its newest complete checkpoint
        newest = latest_checkpoint(folder)
        if newest is not None:
            folder = newest
    recipe_file = folder / "recipe.yaml"
    weights = folder / ("model" if no_ema else "model_ema")
    if not weights.is_dir() and not no_ema and (folder / "model").is_dir():
        warn(f"{folder} has no model_ema/ (trained without EMA); using model/.")
        weights = folder / "model"
    if not weights.is_dir():
        raise UsageError(f"--checkpoint {folder} has no {weights.name}/ folder; is it an osctl checkpoint-N folder?")
    if not recipe_file.is_file():
        raise UsageError(f"--checkpoint {folder} has no recipe.yaml; pass --recipe with the training recipe.")
    recorded = (yaml.safe_load(recipe_file.read_text()) or {}).get("diffusion")
    return recipe_file, weights, recorded


def _is_lora_checkpoint(folder: Path) -> bool:
    """True for a LoRA run's checkpoint-N (or an output folder whose newest checkpoint is one)."""
    from osctl.train.checkpoint import is_complete, latest_checkpoint
    from osctl.train.lora import ADAPTER_DIR

    if not is_complete(folder):
        folder = latest_checkpoint(folder) or folder
    return (folder / ADAPTER_DIR).is_dir() and not (folder / "model").is_dir()


def _lora_checkpoint_inputs(folder: Path, no_ema: bool) -> tuple[Path, Path, Path | None, dict[str, object] | None]:
    """The recipe, the adapter folder, the base weights (``train.pretrained``) and the recorded diffusion
    settings of a LoRA checkpoint: the base comes from its recipe, the adapter from the checkpoint."""
    import yaml

    from osctl.train.checkpoint import is_complete, latest_checkpoint
    from osctl.train.lora import ADAPTER_DIR, ADAPTER_EMA_DIR

    if not is_complete(folder):
        folder = latest_checkpoint(folder) or folder
    recipe_file = folder / "recipe.yaml"
    if not recipe_file.is_file():
        raise UsageError(f"--checkpoint {folder} has no recipe.yaml; pass --recipe with the training recipe.")
    adapter = folder / (ADAPTER_DIR if no_ema or not (folder / ADAPTER_EMA_DIR).is_dir() else ADAPTER_EMA_DIR)
    saved = yaml.safe_load(recipe_file.read_text()) or {}
    pretrained = (saved.get("train") or {}).get("pretrained")
    return recipe_file, adapter, Path(pretrained) if pretrained else None, saved.get("diffusion")


def register(app: typer.Typer) -> None:
    """Add `osctl sample` to the root app."""
    app.command("sample")(sample)
