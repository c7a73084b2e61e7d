"""Checkpoints written by `osctl train` under the multi-process strategies are identified and convert exactly.

Two processes train the tiny recipe for 2 steps under fsdp and deepspeed (skipped when a strategy is not
installed); the engine state (DCP shards, ZeRO partitions) must consolidate to the weights the run saved
in model/ and model_ema/, and the exported folders must load with the model plugin.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from osctl.ckpt.convert import ConvertOptions, convert
from osctl.ckpt.inspect import inspect_path
from osctl.plugin_manager import default_registry
from tests.ckpt_helpers import make_strategy_checkpoints

STRATEGIES = [name for name in ("fsdp", "deepspeed") if name in default_registry().names("strategy")]

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess,
              pytest.mark.skipif(not STRATEGIES, reason="no multi-process strategy plugin installed")]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return make_strategy_checkpoints(tmp_path_factory.mktemp("strategies"), STRATEGIES)


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_checkpoint_inspects_and_round_trips(checkpoints, strategy, tmp_path):
    ckpt = checkpoints[strategy]
    report = inspect_path(ckpt, verify_hashes=True)
    assert report["format"] == "osctl-checkpoint" and report["global_step"] == 2
    assert report["training"]["strategy"] == strategy and report["training"]["world_size"] == 2
    assert report["integrity"]["ok"], report["integrity"]["problems"]
    assert report["architecture"]["class_name"] == "OpenSoraT2V_v1_3"
    assert report["ema"]["present"] and report["optimizer"]["present"] and report["optimizer"]["bytes"] > 0
    model = load_file(ckpt / "model" / "diffusion_pytorch_model.safetensors")
    ema = load_file(ckpt / "model_ema" / "diffusion_pytorch_model.safetensors")
    engine = report["engine"]
    if strategy == "fsdp":
        assert engine["kind"] == "dcp" and engine["ranks"] == 2
    else:
        assert engine["kind"] == "deepspeed" and engine["world_size"] == 2 and engine["zero_stage"] in (1, 2, 3)
    # the engine state alone gives back the saved weights (all ranks' shards put together)
    state_dir = ckpt / "training_state" / ("dcp" if strategy == "fsdp" else "deepspeed")
    convert(state_dir, ConvertOptions(to="safetensors", output=tmp_path / "engine.safetensors"))
    assert _equal(load_file(tmp_path / "engine.safetensors"), model)
    if strategy == "fsdp":
        convert(state_dir, ConvertOptions(to="safetensors", output=tmp_path / "engine_ema.safetensors", ema=True))
        assert _equal(load_file(tmp_path / "engine_ema.safetensors"), ema)
    for use_ema, expected in ((False, model), (True, ema)):
        out = tmp_path / f"diffusers-{use_ema}"
        convert(ckpt, ConvertOptions(to="diffusers", output=out, ema=use_ema))
        built = default_registry().build("model", "opensora_v1_3", {"path": str(out)})
        assert _equal(built.state_dict(), expected)
