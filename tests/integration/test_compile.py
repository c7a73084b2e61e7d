"""``train.compile`` on CPU: the tiny v1.3 model on real media in several bucket shapes trains to the losses of the
eager run (<= 1e-5; full fine-tuning and LoRA, whose peft layers sit inside the compiled blocks), every bucket shape is compiled before the first step (no compilation during training), and the
checkpoint holds the same weight names as the eager run's (the blocks are compiled in place)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from osctl.errors import ConfigError
from osctl.plugin_manager import default_registry
from osctl.recipe.load import load_recipe
from osctl.recipe.validate import check_recipe
from osctl.train.run import TrainOptions, run_training
from tests.integration.test_data_pipeline import _recipe, shapes  # noqa: F401  (the module's data fixture)

pytestmark = pytest.mark.slow
TWO_BUCKETS = ["data.max_hxw=256"]  # 9x16x16 clips and 1x16x16 images: two shapes to compile, not six


def _train(folder: Path, data_txt: Path, overrides: list[str], records: list[dict]):
    folder.mkdir()
    recipe = _recipe(folder, data_txt)
    registry = default_registry()
    checked = check_recipe(load_recipe(recipe, ["train.max_steps=6", "train.checkpointing_steps=100", *overrides]),
                           registry)
    return run_training(checked, registry, TrainOptions(log=records.append))


def _weight_names(out: Path) -> set[str]:
    files = sorted((out / "checkpoint-6" / "model").glob("*.safetensors"))
    names: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            names.update(handle.keys())
    return names


@pytest.mark.parametrize("run", ["full", "lora"])
def test_compiled_training_equals_eager_and_compiles_every_shape_before_step_one(shapes, tmp_path, run):  # noqa: F811
    eager_records: list[dict] = []
    compiled_records: list[dict] = []
    sets = [*TWO_BUCKETS, *(["train.lora={rank: 4}"] if run == "lora" else [])]  # peft's layers inside the blocks
    eager = _train(tmp_path / "eager", shapes, sets, eager_records)
    compiled = _train(tmp_path / "compiled", shapes, [*sets, "train.compile=true"], compiled_records)
    for a, b in zip(compiled.losses, eager.losses, strict=True):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(b)), (compiled.losses, eager.losses)
    plan = json.loads((tmp_path / "compiled" / "out" / "plan.json").read_text())
    assert "torch.compile per transformer block" in plan["compile"] and "before step 1" in plan["compile"]
    bucket_count = int(plan["data index"].split(" bucket(s)")[0].rsplit(" ", 1)[1])
    assert bucket_count >= 2  # the warm-up has several shapes to compile
    last = compiled_records[-1]
    assert last["compiles"] >= 2 * bucket_count  # at least a forward and a backward graph per shape
    assert last["recompiles"] == 0 and last["compile_warmup_s"] > 0
    assert "compiles" not in eager_records[-1]
    if run == "full":  # (a LoRA checkpoint holds the adapter alone)
        assert _weight_names(tmp_path / "compiled" / "out") == _weight_names(tmp_path / "eager" / "out")


@pytest.mark.parametrize(("sets", "message"), [
    (["parallel.strategy=deepspeed"], "train.compile is not supported with parallel.strategy: deepspeed"),
    (["train.lora={rank: 4}", "train.offload={blocks: 1}"], "drop one of train.compile and train.offload"),
])
def test_compile_refuses_what_it_cannot_compile(shapes, tmp_path, sets, message):  # noqa: F811
    from osctl.train.plan import plan_training

    folder = tmp_path / "r"
    folder.mkdir()
    registry = default_registry()
    checked = check_recipe(load_recipe(_recipe(folder, shapes), ["train.compile=true", *sets]), registry)
    with pytest.raises(ConfigError, match=message):
        plan_training(checked, registry, TrainOptions(dry_run=True))
