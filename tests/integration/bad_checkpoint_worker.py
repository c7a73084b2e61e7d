"""One process for ``test_bad_checkpoints``: train the tiny recipe 1 step under fsdp or deepspeed (a
one-process group), then resume ``osctl train`` from crafted copies of that checkpoint.

    python bad_checkpoint_worker.py STRATEGY ROOT

Each case copies ``checkpoint-1`` into ``ROOT/CASE/out``, plants a damaged or malicious file (the
manifest is resealed, as an attacker would, so the file reaches its reader), runs ``osctl train
--resume-from-checkpoint latest`` through the CLI in this process and records the exit code, the
output and whether the payload's marker file appeared. The ``intact`` case (last: a finished run
leaves the process group) resumes an unmodified copy and must train on. Results go to
``ROOT/results.json``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from tests.ckpt_helpers import Evil, write_malicious_pt  # noqa: E402
from tests.train_helpers import SyntheticClips, write_tiny_recipe  # noqa: E402


def train_once(strategy: str, root: Path) -> Path:
    """The checkpoint of a 1-step run under ``strategy`` (one process)."""
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.run import TrainOptions, run_training

    recipe = write_tiny_recipe(root, root / "trained", root / "cache")
    registry = default_registry()
    sets = [f"parallel.strategy={strategy}", "train.max_steps=1", "train.checkpointing_steps=1"]
    checked = check_recipe(load_recipe(recipe, sets), registry)
    text_encoder = registry.build("text_encoder", "tiny_t5", checked.components["text_encoder"])
    run_training(checked, registry, TrainOptions(data_source=SyntheticClips(text_encoder.tokenize)))
    return root / "trained" / "checkpoint-1"


def synthetic_source(checked: Any, registry: Any, info: Any, *, layout: Any, dp_rank: int) -> Any:
    """Stands in for the sample index: the tiny recipe's synthetic clips."""
    text_encoder = registry.build("text_encoder", "tiny_t5", checked.components["text_encoder"])
    return SyntheticClips(text_encoder.tokenize, dp_rank=dp_rank, dp_size=layout.dp_size), {}


def reseal(checkpoint: Path) -> None:
    """Rewrite the manifest so sizes match again (the manifest is no defence against a crafted folder)."""
    from osctl.train.checkpoint import write_manifest

    write_manifest(checkpoint)


def plant_dcp_bytes_item(dcp: Path, marker: Path) -> str:
    """Point one non-tensor ("bytes") item of a DCP folder at a pickle that would run ``touch marker``."""
    metadata = pickle.loads((dcp / ".metadata").read_bytes())  # the test's own, trusted file
    index = next(i for i, md in ((i, metadata.state_dict_metadata[i.fqn]) for i in metadata.storage_data)
                 if type(md).__name__ == "BytesStorageMetadata")
    info = metadata.storage_data[index]
    payload = io.BytesIO()
    torch.save(Evil(marker), payload)
    target = dcp / info.relative_path
    offset = target.stat().st_size
    with target.open("ab") as handle:
        handle.write(payload.getvalue())
    info.offset, info.length = offset, len(payload.getvalue())
    (dcp / ".metadata").write_bytes(pickle.dumps(metadata))
    return str(target)


def plant(strategy: str, case: str, checkpoint: Path, marker: Path) -> None:
    state = checkpoint / "training_state"
    if strategy == "fsdp":
        dcp = state / "dcp"
        if case == "metadata":
            (dcp / ".metadata").write_bytes(pickle.dumps(Evil(marker)))
        elif case == "bytes_item":
            plant_dcp_bytes_item(dcp, marker)
        elif case == "distcp_truncated":
            shard = next(dcp.glob("*.distcp"))
            shard.write_bytes(shard.read_bytes()[:-100])
        elif case == "lr_scheduler":
            write_malicious_pt(state / "lr_scheduler.pt", marker)
    else:
        tag = state / "deepspeed" / "global_step1"
        if case == "optim_states":
            write_malicious_pt(next(tag.glob("*optim_states.pt")), marker)
        elif case == "model_states":
            write_malicious_pt(next(tag.glob("*model_states.pt")), marker)
        elif case == "optim_truncated":
            optim = next(tag.glob("*optim_states.pt"))
            optim.write_bytes(optim.read_bytes()[:-200])
    reseal(checkpoint)


def resume(recipe: Path, out: Path, max_steps: int) -> tuple[int, str]:
    from typer.testing import CliRunner

    from osctl.cli import app

    result = CliRunner().invoke(app, ["train", "--recipe", str(recipe), "--resume-from-checkpoint", "latest",
                                      "--set", f"train.output_dir={out}", "--set", f"train.max_steps={max_steps}"])
    return result.exit_code, result.output


def stale_lock_case(root: Path) -> dict[str, Any]:
    """A build lock left by a killed CPU Adam build (no holder) is removed before DeepSpeed would build."""
    from osctl_builtin.strategies.build_lock import extension_lock
    from osctl_builtin.strategies.deepspeed_engine import clear_stale_build_locks

    os.environ["TORCH_EXTENSIONS_DIR"] = str(root / "extensions")
    lock = extension_lock("cpu_adam")
    lock.write_bytes(b"")
    clear_stale_build_locks(["CPUAdamBuilder"])
    return {"lock": str(lock), "removed": not lock.exists()}


def main() -> None:
    strategy, root = sys.argv[1], Path(sys.argv[2])
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if strategy == "deepspeed":
        import deepspeed  # noqa: F401

        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None  # nothing compiled on CPU
    import osctl.data.stream.loader

    osctl.data.stream.loader.build_batch_source = synthetic_source
    checkpoint = train_once(strategy, root)
    cases = {"fsdp": ["metadata", "bytes_item", "distcp_truncated", "lr_scheduler"],
             "deepspeed": ["optim_states", "model_states", "optim_truncated"]}[strategy]
    results: dict[str, Any] = {}
    for case in [*cases, "intact"]:
        out = root / case / "out"
        shutil.copytree(checkpoint, out / checkpoint.name)
        marker = root / case / "PWNED"
        plant(strategy, case, out / checkpoint.name, marker)
        code, output = resume(checkpoint / "recipe.yaml", out, 2 if case == "intact" else 1)
        results[case] = {"exit_code": code, "output": output, "marker": str(marker),
                         "checkpoint": str(out / checkpoint.name)}
    if strategy == "deepspeed":
        from osctl.parallel.dist import ensure_process_group

        ensure_process_group()
        results["stale_lock"] = stale_lock_case(root)
    (root / "results.json").write_text(json.dumps(results, indent=1))
    from osctl.parallel.dist import shutdown

    shutdown(0)


if __name__ == "__main__":
    main()
