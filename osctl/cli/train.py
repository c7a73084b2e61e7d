"""`osctl train`: diffusion training from a recipe, on one process or many."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from osctl.cli._options import SetOpt
from osctl.cli._output import console, err_console, escape, print_json, warn
from osctl.parallel.launch import reporting_errors_to_launcher

Opt = typer.Option


@reporting_errors_to_launcher()  # a worker's error reaches the launcher's summary
def train(
    recipe: Annotated[Path, Opt("--recipe", "-r", help="YAML recipe.", show_default=False)],
    overrides: SetOpt = None,
    resume_from_checkpoint: Annotated[
        str | None, Opt("--resume-from-checkpoint", help="'latest' or a checkpoint-N path (wins over pretrained).")
    ] = None,
    dry_run: Annotated[bool, Opt("--dry-run", help="Print the plan (model, data, batches, memory) and exit.")] = False,
    allow_recipe_change: Annotated[
        bool, Opt("--allow-recipe-change", help="Resume even if data- or model-shaping recipe keys changed.")
    ] = False,
    as_json: Annotated[bool, Opt("--json", help="With --dry-run: print the plan as JSON.")] = False,
    device_memory: Annotated[str | None, Opt(
        "--device-memory", help="Memory of one device, e.g. 24GB: the plan says whether each bucket fits and a "
        "launch that does not fit is refused (default: the GPU's own; unknown on a CPU).")] = None,
    nproc_per_node: Annotated[int | None, Opt(
        "--nproc-per-node", help="Start this many processes on this node (default: parallel.nproc_per_node).")] = None,
    nnodes: Annotated[int | None, Opt("--nnodes", help="Number of nodes (default: parallel.nnodes).")] = None,
    node_rank: Annotated[int, Opt("--node-rank", help="This node's rank.")] = 0,
    rdzv_endpoint: Annotated[str | None, Opt("--rdzv-endpoint", help="HOST:PORT shared by all nodes.")] = None,
) -> None:
    """Train a text-to-video diffusion model as the recipe says.

    Examples:

      [bold]osctl train --recipe recipes/480p.yaml --set train.max_steps=2000[/]

      [bold]osctl train --recipe recipes/480p.yaml --resume-from-checkpoint latest[/]

      [bold]osctl train --recipe recipes/480p.yaml --nproc-per-node 8[/]

      [bold]osctl train --recipe recipes/480p.yaml --nnodes 4 --node-rank 0 --rdzv-endpoint host:29500 --nproc-per-node 8[/]

      [bold]torchrun --nproc-per-node 8 -m osctl train --recipe recipes/480p.yaml[/]

      [bold]osctl train --recipe recipes/480p.yaml --dry-run[/]

      [bold]osctl train --recipe recipes/lora.yaml --dry-run --device-memory 24GB[/]
    """
    from osctl.parallel.dist import under_launcher
    from osctl.parallel.launch import LaunchOptions, relaunch
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe

    sets = list(overrides or [])
    if resume_from_checkpoint is not None:
        sets.append(f"train.resume_from_checkpoint={resume_from_checkpoint}")
    registry = default_registry()
    checked = check_recipe(load_recipe(recipe, sets), registry)
    parallel = checked.loaded.recipe.parallel
    launch = LaunchOptions(parallel.nproc_per_node if nproc_per_node is None else nproc_per_node,
                           parallel.nnodes if nnodes is None else nnodes, node_rank, rdzv_endpoint)
    # the recipe's process count starts processes only from outside a launcher (its workers run this too)
    from_recipe_inside_launcher = nproc_per_node is None and under_launcher()
    if not dry_run:  # without the weights, refuse before any process starts or anything is built
        from osctl.train.plan import require_training_weights

        require_training_weights(checked)
    if launch.wanted and not dry_run and not from_recipe_inside_launcher:
        _check_layout_before_launch(checked, registry, launch.nproc_per_node * launch.nnodes)
        raise typer.Exit(relaunch(launch))

    from osctl.parallel.dist import shutdown
    from osctl.train.run import Plan, TrainOptions, run_training

    if _is_main():
        for message in checked.warnings:
            warn(message)
    # logs/metrics.jsonl and the recipe's train.trackers are written by run_training on rank 0
    display = TrainingDisplay(live=not dry_run and err_console.is_terminal)
    from osctl.train.memory import parse_size

    options = TrainOptions(dry_run=dry_run, allow_recipe_change=allow_recipe_change, log=display.log,
                           on_step=display.on_step, show_plan=_print_plan,
                           device_memory=parse_size(device_memory) if device_memory else None)
    try:
        outcome = run_training(checked, registry, options)
    finally:
        display.close()
    if isinstance(outcome, Plan):
        if as_json:
            print_json(outcome.as_dict())
        else:
            _print_plan(outcome)
        shutdown()
        return
    last = outcome.checkpoints[-1] if outcome.checkpoints else None
    if _is_main():
        status = "stopped by signal at" if outcome.interrupted else "finished at"
        console.print(f"{status} step {outcome.final_step}; last checkpoint: {escape(last)}")
    # several processes: leave the group and exit at once (gloo can abort during interpreter teardown)
    shutdown(0 if _world_size() > 1 else None)


def _check_layout_before_launch(checked: Any, registry: Any, world: int) -> None:
    """Refuse a layout or strategy that cannot run on ``world`` processes before any process starts."""
    from osctl.build import strategy_name
    from osctl.parallel.layout import LAUNCH_NAMES, ParallelLayout

    recipe = checked.loaded.recipe
    layout = ParallelLayout.from_recipe(recipe, world_size=world, names=LAUNCH_NAMES)
    architecture = getattr(checked.components.get("model"), "architecture", None)
    if callable(architecture) and layout.sequence_parallel:
        layout.check_heads(architecture().get("num_attention_heads"))
    strategy_name(recipe, registry, world, processes="--nproc-per-node x --nnodes starts {n} processes")


def _world_size() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def duration(seconds: float | None) -> str:
    """``H:MM:SS`` (``D days, H:MM:SS`` past a day) for an ETA or elapsed time; ``?`` when unknown."""
    if seconds is None or not seconds >= 0 or seconds == float("inf"):
        return "?"
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days} day{'s' if days > 1 else ''}, {text}" if days else text


def record_line(record: dict[str, Any]) -> str:
    """One logged step as a line: step N/total, loss (and its average since the last line), lr, grad norm,
    samples/s, elapsed time, ETA, bad media, torch.compile's compilations and (on a GPU) model TFLOP/s and MFU (the same record goes to logs/metrics.jsonl and the trackers)."""
    total = f"/{record['total_steps']}" if record.get("total_steps") is not None else ""
    avg = f" (avg {record['loss_avg']:.4f})" if record.get("loss_avg") is not None else ""
    grad = f" grad {record['grad_norm']:.3f}" if record.get("grad_norm") is not None else ""
    speed = f"  {record['samples_per_s']:.1f} samples/s" if record.get("samples_per_s") is not None else ""
    eta = f"  ETA {duration(record['eta_s'])}" if "eta_s" in record else ""
    bad = f"  bad media {record['data_bad_reads']}" if record.get("data_bad_reads") else ""
    bad += f"  compiles {record['compiles']}" if record.get("compiles") is not None else ""
    bad += f"  {record['tflops']:.0f} TFLOP/s" if record.get("tflops") is not None else ""
    bad += f"  MFU {record['mfu']:.1%}" if record.get("mfu") is not None else ""
    return (f"step {record['step']:>6}{total}  loss {record['loss']:.4f}{avg}  lr {record['lr']:.2e}{grad}{speed}  "
            f"{record['elapsed_s']:.1f}s{eta}{bad}")


class TrainingDisplay:
    """What rank 0 shows while training: a line per logged step (on stdout, for logs and CI) and, when
    ``live`` (stderr is a terminal), a progress bar below them with step N/total, loss, samples/s and ETA,
    refreshed every step. Other ranks show nothing. The library only hands over records; rich is here.
    """

    def __init__(self, *, live: bool, bar_console: Any = None) -> None:
        self.main = _is_main()
        self.live = live and self.main
        self.bar_console = bar_console or err_console
        self.progress: Any = None
        self.task: Any = None
        self.speed = "? samples/s"

    def on_step(self, step: int, record: dict[str, Any]) -> None:
        """Move the bar to ``step`` (started on the first step, so setup messages come before it)."""
        if not self.live:
            return
        if self.progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.progress = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                                     TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
                                     TextColumn("ETA {task.fields[eta]}"), console=self.bar_console,
                                     # lines on a terminal stdout go above the bar; stdout to a file stays there
                                     redirect_stdout=console.is_terminal)
            self.task = self.progress.add_task("train", total=record.get("total_steps"), completed=step,
                                               loss="?", speed=self.speed, eta="?")
        self.progress.update(self.task, completed=step, total=record.get("total_steps"), speed=self.speed,
                             loss=f"{record['loss']:.4f}", eta=duration(record.get("eta_s")))
        if not self.progress.live.is_started:
            self.progress.start()  # its first picture already shows this step

    def log(self, record: dict[str, Any]) -> None:
        """Print a logged step's line on stdout (above the bar when both are on the terminal)."""
        if not self.main:
            return
        if record.get("samples_per_s") is not None:
            self.speed = f"{record['samples_per_s']:.1f} samples/s"
            if self.progress is not None:
                self.progress.update(self.task, speed=self.speed)
        console.print(record_line(record), markup=False, soft_wrap=True)  # one line each, also in log files

    def close(self) -> None:
        """Stop the bar (leaving its last state on screen)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _print_plan(plan: Any) -> None:
    table = Table(title="training plan", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in plan.lines:
        table.add_row(escape(key), escape(value))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add `osctl train` to the root app."""
    app.command("train")(train)

