"""`osctl ckpt`: inspect checkpoints and convert them between formats.

Kept light: nothing heavy is imported at module level (every ``osctl`` command imports this file), and
inspecting safetensors files or diffusers folders never imports torch.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from osctl.cli._options import JsonOpt, SetOpt
from osctl.cli._output import console, print_json, warn
from osctl.errors import CheckFailed

app = typer.Typer(
    help="Inspect checkpoints (what is it, what does it hold, is it intact) and convert them between formats.",
    no_args_is_help=True,
)

Opt = typer.Option
TRUST_WARNING = ("--trust-pickle: pickled files will be unpickled with full Python semantics; a malicious file "
                 "can run any code on this machine. Use it only for files whose origin you trust.")


class Target(StrEnum):
    """Output formats of ``ckpt convert``."""

    diffusers = "diffusers"
    diffusers_pipeline = "diffusers-pipeline"
    safetensors = "safetensors"
    pt = "pt"
    comfyui_lora = "comfyui-lora"


class DType(StrEnum):
    """Floating dtypes ``ckpt convert`` casts to."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


@app.command("inspect")
def inspect_cmd(
    path: Annotated[Path, typer.Argument(help="Checkpoint file or folder.", metavar="PATH", show_default=False)],
    tensors: Annotated[bool, Opt("--tensors", help="List every tensor: name, shape, dtype (and file).")] = False,
    as_json: JsonOpt = False,
    recipe: Annotated[Path | None, Opt("--recipe", "-r", help="Compare the checkpoint's recipe with this one.")] = None,
    overrides: SetOpt = None,
    verify_hashes: Annotated[bool, Opt("--verify-hashes", help="Also check every file's SHA-256 against "
                                       "manifest.json (reads every byte; sizes are always checked).")] = False,
    trust_pickle: Annotated[bool, Opt("--trust-pickle", help="Unpickle .pt/.bin files that need more than "
                                      "weights_only allows (runs code from the file: trusted files only).")] = False,
) -> None:
    """Say what a checkpoint is and what it holds, without loading its weights.

    Formats: osctl checkpoint-N; diffusers / transformers folders (sharded or not); Open-Sora-Plan training checkpoints (accelerate/DeepSpeed); DeepSpeed ZeRO folders; FSDP/DCP folders; .safetensors files; .pt/.pth/.bin/.ckpt files (read with weights_only=True). Shows the architecture and the osctl plugin that loads it, parameters (total and per top-level module), dtypes, size on disk, EMA, global step, optimizer state, recipe fingerprint (with --recipe: the fields that differ) and integrity (every file in manifest.json present with the right size, and hash with --verify-hashes). Exit 1 when the checkpoint is damaged.

    JSON (--json, schema "osctl.ckpt.inspect/1"): path, format, description, size_bytes, file_count, architecture {class_name, source, loads_with {kind, name, provider}, config, recipe_section}, weights {path, tensors, parameters, bytes, dtypes {DTYPE: {tensors, parameters}}, modules {NAME: parameters}, files}, ema {present, ...same as weights, details}, global_step, training, engine {kind, ...}, optimizer {present, bytes, files}, recipe {fingerprint, compared_with, given_fingerprint, same, shaping_changes, other_changes}, integrity {ok, manifest, checked_files, hashes_verified, problems, unlisted}, notes, and with --tensors: tensors [{name, shape, dtype, file}]. Absent facts are null.

    Examples:

      [bold]osctl ckpt inspect out/checkpoint-2000[/]

      [bold]osctl ckpt inspect LanguageBind/any93x640x640 --tensors --json[/]

      [bold]osctl ckpt inspect out/checkpoint-2000 --recipe recipes/480p.yaml --verify-hashes[/]
    """
    from osctl.ckpt.inspect import check_recipe_arg, inspect_path, integrity_error

    check_recipe_arg(recipe)
    if trust_pickle:
        warn(TRUST_WARNING)
    report = inspect_path(path, tensors=tensors, recipe=recipe, recipe_overrides=overrides,
                          verify_hashes=verify_hashes, trust_pickle=trust_pickle)
    if as_json:
        print_json(report)
    else:
        _render_inspect(report)
    problem = integrity_error(report)
    if problem:
        raise CheckFailed(problem, hint="osctl ckpt inspect --json PATH lists every problem under integrity.problems")


@app.command("convert")
def convert_cmd(
    src: Annotated[Path, typer.Argument(help="Checkpoint file or folder to convert.", metavar="SRC", show_default=False)],
    to: Annotated[Target | None, Opt("--to", help="Output format.", case_sensitive=False, show_default=False)] = None,
    output: Annotated[Path | None, Opt("--output", "-o", help="Output file or folder (default: next to SRC).")] = None,
    ema: Annotated[bool, Opt("--ema", help="Take the EMA weights (model_ema/, ema_state_dict, DCP 'ema').")] = False,
    dtype: Annotated[DType | None, Opt("--dtype", help="Cast floating tensors (default: keep).", case_sensitive=False)] = None,
    max_shard_size: Annotated[str | None, Opt("--max-shard-size", help="Shard safetensors above this size, e.g. "
                                              "5GB, 500MB (default 10GB for folders).")] = None,
    config: Annotated[Path | None, Opt("--config", help="config.json for --to diffusers when SRC has none.")] = None,
    dry_run: Annotated[bool, Opt("--dry-run", help="Show what would be written; write nothing.")] = False,
    force: Annotated[bool, Opt("--force", help="Replace an existing output.")] = False,
    trust_pickle: Annotated[bool, Opt("--trust-pickle", help="Unpickle .pt/.bin files that need more than "
                                      "weights_only allows (runs code from the file: trusted files only).")] = False,
    merge_lora: Annotated[Path | None, Opt("--merge-lora", help="Merge this LoRA adapter into SRC (the base "
                                           "weights) and write the merged weights to -o.", metavar="ADAPTER")] = None,
    scale: Annotated[float, Opt("--scale", help="With --merge-lora: the adapter's multiplier.")] = 1.0,
    as_json: JsonOpt = False,
) -> None:
    """Convert weights between formats; the result is re-read and compared before it is put in place.

    Sources: anything `ckpt inspect` recognises (training checkpoints give model/ or, with --ema, model_ema/; DeepSpeed ZeRO-1/2/3 and FSDP/DCP shards are consolidated). Targets: a diffusers folder (config.json + diffusion_pytorch_model*.safetensors, sharded with an index above --max-shard-size), safetensors (one file when -o ends in .safetensors, else a folder of model*.safetensors), or pt (one torch file of a plain state dict). Training-wrapper prefixes (module., _orig_mod.) are removed.

    diffusers-pipeline (a checkpoint of a diffusers family such as wan): a complete pipeline folder that diffusers.DiffusionPipeline.from_pretrained loads: model_index.json, the trained transformer/ (and transformer_2/), and the vae/, text_encoder/, tokenizer/ the checkpoint's recipe names (hard-linked or copied; built and saved for presets) and its sampler as scheduler/.

    Safety: writes into a temporary name next to the output and renames it only after verifying names, shapes, dtypes and the SHA-256 of every tensor; never replaces an existing output without --force; writes nothing on failure; reads .pt/.bin with weights_only=True and refuses code-carrying pickles unless --trust-pickle.

    JSON (--json, schema "osctl.ckpt.convert/1"): source {path, format, part, label}, output, to, layout (file|folder), dtype, dry_run, replaced, tensors, parameters, bytes, files [{path, bytes, tensors, sha256}], verified {tensors, names, shapes, dtypes, checksums} (null with --dry-run), config_source, notes.

    Examples:

      [bold]osctl ckpt convert out/checkpoint-2000 --to diffusers --ema --dtype bf16 -o exported/[/]

      [bold]osctl ckpt convert model.pt --to safetensors -o model.safetensors[/]

      [bold]osctl ckpt convert out/checkpoint-2000/training_state/deepspeed --to safetensors --max-shard-size 5GB -o merged/[/]

      [bold]osctl ckpt convert exported/ --to safetensors -o exported.safetensors --dry-run[/]

      [bold]osctl ckpt convert out/checkpoint-2000 --to diffusers-pipeline --ema -o wan-finetuned/[/]

      [bold]osctl ckpt convert out/checkpoint-500/adapter --to comfyui-lora -o my_lora_comfyui.safetensors[/]

      [bold]osctl ckpt convert ckpt/base --merge-lora out/checkpoint-500 --scale 0.8 -o merged/[/]

    LoRA adapters: --to comfyui-lora writes the key naming ComfyUI's loaders use (diffusion_model.<module>.lora_down/lora_up/alpha) for the families ComfyUI loads (Wan; Open-Sora-Plan v1.3 has none); --merge-lora ADAPTER adds scale x the adapter's update to SRC's weights (a diffusers folder gives a folder, a file one .safetensors file).
    """
    from osctl.ckpt.convert import ConvertOptions, convert, parse_size
    from osctl.errors import UsageError

    if merge_lora is not None or to == Target.comfyui_lora:
        _convert_adapter(src, to, output, merge_lora, scale, force, dry_run, as_json)
        return
    if to is None:
        raise UsageError("ckpt convert needs --to FORMAT (or --merge-lora ADAPTER); see osctl ckpt convert --help.")
    if to is Target.diffusers_pipeline:
        from osctl.families.pipeline_export import export_pipeline

        report = export_pipeline(src, output, ema=ema, dtype=dtype.value if dtype else None, force=force,
                                 dry_run=dry_run)
        if as_json:
            print_json(report)
        else:
            _render_convert(report)
        return
    if trust_pickle:
        warn(TRUST_WARNING)
    options = ConvertOptions(to=to.value, output=output, ema=ema, dtype=dtype.value if dtype else None,
                             max_shard_size=parse_size(max_shard_size), config=config, dry_run=dry_run,
                             force=force, trust_pickle=trust_pickle)
    report = convert(src, options)
    if as_json:
        print_json(report)
    else:
        _render_convert(report)


def _convert_adapter(src: Path, to: Target | None, output: Path | None, merge_lora: Path | None, scale: float,
                     force: bool, dry_run: bool, as_json: bool) -> None:
    """``--to comfyui-lora`` and ``--merge-lora``: the adapter conversions of ``osctl.ckpt.adapters``."""
    from osctl.ckpt.adapters import merge_lora as merge
    from osctl.ckpt.adapters import to_comfyui
    from osctl.errors import UsageError

    if merge_lora is not None:
        if to is not None:
            raise UsageError("--merge-lora writes merged weights in SRC's layout; drop --to.")
        if output is None:
            raise UsageError("--merge-lora needs -o OUTPUT (a folder for a diffusers base, a .safetensors file "
                             "for a file).")
        report = merge(src, merge_lora, output, scale=scale, force=force, dry_run=dry_run)
        line = f"merged {report['adapter']} x {scale:g} into {report['merged_modules']} modules of {src}"
    else:
        report = to_comfyui(src, output, force=force, dry_run=dry_run)
        line = f"wrote {report['modules']} modules of {report['source']} in ComfyUI's {report['family']} naming"
    if as_json:
        print_json(report)
        return
    console.print(f"{'would have ' if dry_run else ''}{line} -> {report['output']}")


# --- human output ----------------------------------------------------------------------------------------

def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def _count(n: int) -> str:
    if n >= 10**9:
        return f"{n / 1e9:.2f} B"
    if n >= 10**6:
        return f"{n / 1e6:.2f} M"
    if n >= 10**3:
        return f"{n / 1e3:.1f} k"
    return str(n)


def _weights_line(weights: dict[str, Any]) -> str:
    dtypes = ", ".join(f"{name} ({_count(d['parameters'])})" if len(weights["dtypes"]) > 1 else name
                       for name, d in weights["dtypes"].items())
    where = f"{weights['path']}: " if weights.get("path") not in (None, ".") else ""
    return (f"{where}{_count(weights['parameters'])} parameters in {weights['tensors']} tensors, {dtypes}, "
            f"{_size(weights['bytes'])}")


def _render_inspect(report: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(f"[bold]{escape(report['path'])}[/]  {escape(report['description'])}  "
                  f"({report['file_count']} file(s), {_size(report['size_bytes'])} on disk)")
    table = Table.grid(padding=(0, 2))
    table.add_column(style="cyan", no_wrap=True)
    table.add_column()
    arch = report.get("architecture")
    if arch:
        loads = arch.get("loads_with")
        how = (f" — loads with {loads['kind']} [bold]{escape(loads['name'])}[/] ({escape(loads['provider'])})" if loads
               else " — no installed osctl plugin declares this class")
        guessed = " (guessed from tensor names)" if arch.get("source") == "tensor names" else ""
        table.add_row("architecture", f"{escape(str(arch.get('class_name')))}{guessed}{how}")
        config = arch.get("config") or {}
        from osctl.ckpt.inspect import HEADLINE_KEYS

        shown = [f"{k}={config[k]}" for k in HEADLINE_KEYS if k in config]
        if shown:
            table.add_row("", escape(" ".join(shown)))
        if arch.get("warning"):
            table.add_row("", f"[yellow]{escape(arch['warning'])}[/]")
        for kind, section in (arch.get("recipe_section") or {}).items():
            table.add_row("", escape(f"recipe: {kind}: {{name: {section['name']}, path: {section['path']}}}"))
    pipeline = report.get("pipeline")
    if pipeline:
        settings = ", ".join(f"{k} {v}" for k, v in pipeline["settings"].items())
        table.add_row("pipeline", escape(f"{pipeline['class_name']}" + (f" ({settings})" if settings else "")))
        for name, component in pipeline["components"].items():
            loads = component.get("loads_with")
            how = f" — {loads['kind']} {loads['name']}" if loads else ""
            size = f", {_count(component['parameters'])} parameters" if "parameters" in component else ""
            missing = "" if component["present"] else " [red](missing)[/]"
            table.add_row(f"  {escape(name)}", escape(f"{component['class_name']}{size}{how}") + missing)
    weights = report.get("weights")
    if weights:
        table.add_row("weights", escape(_weights_line(weights)))
        modules = sorted(weights["modules"].items(), key=lambda kv: -kv[1])
        shown_modules = ", ".join(f"{escape(name)} {_count(n)}" for name, n in modules[:8])
        more = f", … {len(modules) - 8} more" if len(modules) > 8 else ""
        table.add_row("  by module", shown_modules + more)
        for name, part in (report.get("parts") or {}).items():
            table.add_row(f"  {escape(name)}/", escape(_weights_line(part)))
    for key in ("adapter", "adapter_ema"):
        facts = report.get(key)
        if facts:
            base = facts["base"]
            table.add_row(key.replace("_", " "), escape(
                f"{facts['file']}: LoRA rank {facts['rank']}, alpha {facts['alpha']}, {facts['modules']} modules "
                f"({', '.join(facts['target_modules'] or [])}), {_count(facts['parameters'])} parameters, "
                f"{_size(facts['bytes'])}; base {base['class'] or '?'} {base['fingerprint'] or ''}".rstrip()))
    ema = report["ema"]
    if ema.get("present") and "adapter_ema" in report:
        pass
    elif ema.get("present"):
        details = ema.get("details") or {}
        extra = ", ".join(f"{k} {v}" for k, v in details.items())
        line = _weights_line(ema) if "parameters" in ema else "yes"
        table.add_row("EMA", escape(line + (f" ({extra})" if extra else "")))
    else:
        table.add_row("EMA", "no")
    table.add_row("global step", str(report["global_step"]) if report["global_step"] is not None else "-")
    training = report.get("training")
    if training:
        table.add_row("training", escape(", ".join(f"{k} {v}" for k, v in training.items() if k != "versions")))
    engine = report.get("engine")
    if engine and engine["kind"] != "torch":
        facts = {k: v for k, v in engine.items() if k in ("tag", "zero_stage", "world_size", "ranks", "ds_version")}
        table.add_row("engine", escape(f"{engine['kind']} at {engine['path']}: "
                                       + ", ".join(f"{k} {v}" for k, v in facts.items())))
    optimizer = report["optimizer"]
    table.add_row("optimizer", escape(f"{_size(optimizer['bytes'])} in {', '.join(optimizer['files'][:3])}"
                                      + (" …" if len(optimizer["files"]) > 3 else ""))
                  if optimizer["present"] else "no")
    recipe = report["recipe"]
    if recipe.get("fingerprint") or recipe.get("compared_with"):
        table.add_row("recipe", f"fingerprint {recipe.get('fingerprint') or '-'}")
        if recipe.get("compared_with"):
            same = recipe.get("same")
            verdict = "same recipe" if same else "differs"
            table.add_row("", escape(f"vs {recipe['compared_with']}: {verdict}"))
            for line in recipe.get("shaping_changes", []):
                table.add_row("  [red]changes model/data[/]", escape(line))
            for line in recipe.get("other_changes", []):
                table.add_row("  other", escape(line))
    integrity = report["integrity"]
    if integrity.get("manifest"):
        hashes = "sizes and SHA-256" if integrity.get("hashes_verified") else "sizes (add --verify-hashes for SHA-256)"
        state = "[green]ok[/]" if integrity["ok"] else f"[red]{len(integrity['problems'])} problem(s)[/]"
        table.add_row("integrity", f"{state}: {integrity['checked_files']} files checked against manifest.json, {hashes}")
        for problem in integrity["problems"][:5]:
            table.add_row("", f"[red]{escape(problem)}[/]")
        if integrity.get("unlisted"):
            table.add_row("", escape(f"{len(integrity['unlisted'])} file(s) not in the manifest: "
                                     + ", ".join(integrity["unlisted"][:3])))
    elif integrity.get("checked"):
        table.add_row("integrity", f"[green]ok[/]: {escape(integrity['checked'])} consistent")
    for note in report.get("notes", []):
        table.add_row("note", escape(note))
    console.print(table)
    if "tensors" in report:
        listing = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
        listing.add_column("tensor")
        listing.add_column("shape")
        listing.add_column("dtype")
        listing.add_column("file")
        for item in report["tensors"]:
            listing.add_row(escape(item["name"]), "×".join(map(str, item["shape"])) or "scalar", item["dtype"],
                            escape(item["file"]))
        console.print(listing)


def _render_convert(report: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    source = report["source"]
    dtype = f", {report['dtype']}" if report["dtype"] else ""
    verb = "would convert" if report["dry_run"] else "converted"
    part = f", {source['label']}" if source["label"] not in (".", "") else ""
    console.print(f"{verb} [bold]{escape(source['path'])}[/] ({escape(source['format'] + part)}) → "
                  f"[bold]{escape(report['output'])}[/] " + escape(f"[{report['to']}{dtype}]"))
    table = Table.grid(padding=(0, 2))
    table.add_column(style="cyan")
    table.add_column()
    table.add_column(justify="right")
    table.add_column()
    label = "would write" if report["dry_run"] else "wrote"
    for entry in report["files"]:
        size = _size(entry["bytes"]) + (" (est.)" if report["dry_run"] and entry["bytes"] else "")
        tensors = f"{entry['tensors']} tensors" if entry["tensors"] else ""
        table.add_row(label, escape(entry["path"]), size, tensors)
        label = ""
    console.print(table)
    console.print(f"{report['tensors']} tensors, {_count(report['parameters'])} parameters, {_size(report['bytes'])}")
    for note in report["notes"]:
        console.print(f"[dim]note:[/] {escape(note)}")
    verified = report.get("verified")
    if verified and report["to"] == "diffusers-pipeline":
        console.print(f"[green]verified[/] {verified['tensors']} transformer tensors read back with the checkpoint's "
                      "names and shapes")
    elif verified:
        console.print(f"[green]verified[/] {verified['tensors']} tensors read back: names, shapes, dtypes and "
                      "SHA-256 of every tensor match the source")
    if report["dry_run"]:
        console.print("nothing written (--dry-run)")
    elif report["replaced"]:
        console.print(f"replaced the previous {escape(report['output'])} (--force)")
