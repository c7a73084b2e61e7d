"""Model FLOPs counted on the meta device, and the peaks MFU is measured against."""

from __future__ import annotations

import torch

from osctl.train.flops import device_peak_tflops, mfu, model_step_flops
from tests.builtin.test_osp_v13_transformer import tiny


class _Two(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(16, 32, bias=False)
        self.second = torch.nn.Linear(32, 8, bias=False)
        self.gradient_checkpointing = True  # switched off for the count, back on afterwards

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def test_linear_layers_count_two_flops_per_multiply_add_and_backward_twice_that():
    model = _Two().to("meta")
    tokens = 10

    def inputs():
        return (torch.empty(tokens, 16, device="meta"),), {}

    forward = model_step_flops(model, inputs, backward=False)
    both = model_step_flops(model, inputs, backward=True)
    assert forward == 2 * tokens * (16 * 32 + 32 * 8)
    # backward: weight gradients of both layers, the input gradient of the second only (x needs none)
    assert both - forward == 2 * tokens * (16 * 32 + 32 * 8) + 2 * tokens * 32 * 8
    assert model.gradient_checkpointing is True


def test_skiparse_counts_fewer_attention_flops_than_dense_attention_of_the_same_model():
    def inputs():
        d = "meta"
        return (torch.empty(1, 8, 4, 16, 16, device=d), torch.tensor([500.0], device=d),
                torch.empty(1, 1, 8, 32, device=d)), {"return_dict": False}

    counts = {}
    for name, extra in (("skiparse", {}), ("dense", {"sparse1d": False, "sparse_blocks": None})):
        model = tiny(**extra).to("meta")
        counts[name] = model_step_flops(model, inputs, backward=True)
    assert 0 < counts["skiparse"] < counts["dense"]


def test_device_peaks_match_the_most_specific_name():
    assert device_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert device_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert device_peak_tflops("NVIDIA H200") == 989.4
    assert device_peak_tflops("some new accelerator") is None
    assert abs(mfu(494.7e12, 1.0, 989.4) - 0.5) < 1e-9


def test_step_flops_counts_each_shape_once_and_reports_the_window(monkeypatch):
    from osctl.train import flops as flops_module
    from osctl.train.flops import StepFlops

    calls = []
    counted = flops_module.model_step_flops

    def spy(model, inputs, *, backward):
        calls.append(backward)
        return counted(model, inputs, backward=backward)

    monkeypatch.setattr(flops_module, "model_step_flops", spy)
    step = StepFlops(tiny().to("meta"), sp_size=2, peak_tflops=1.0)
    shape, text = (2, 8, 4, 16, 16), (2, 8, 32)
    step.add(shape, text)
    step.add(shape, text)
    assert calls == [True]  # counted once per shape, with backward
    one = step.count(shape, text)
    assert one > 0 and step.done == 2 * one
    whole = StepFlops(tiny().to("meta")).count(shape, text)
    assert one == whole // 2  # each of 2 sequence-parallel ranks does half of every sample
    step.counting_s = 0.5
    record = step.take(1.5)  # the half second spent counting is not training time
    assert record["tflops"] == 2 * one / 1.0 / 1e12 and record["mfu"] == record["tflops"] / 1.0
    assert step.take(1.0) == {} and step.done == 0


def test_a_model_the_meta_device_cannot_run_is_reported_once_and_not_counted(caplog):
    from osctl.train.flops import StepFlops

    class Broken(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise RuntimeError("needs real values")

    step = StepFlops(Broken())
    step.add((1, 4, 2, 8, 8), (1, 8, 32))
    step.add((1, 4, 2, 8, 8), (1, 8, 32))
    assert step.failed and "needs real values" in step.failed
    assert sum("model FLOPs are not counted" in r.message for r in caplog.records) == 1
    assert step.take(1.0) == {}


def test_training_logs_carry_tflops_and_mfu_when_counted(tmp_path):
    """On a GPU the run sets ``parts.flops``; here it is set by hand on the CPU run of the tiny recipe."""
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.flops import StepFlops
    from osctl.train.loop import train
    from osctl.train.memory import planned_model
    from osctl.train.run import TrainOptions, setup_training
    from tests.train_helpers import SyntheticClips, write_tiny_recipe

    registry = default_registry()
    checked = check_recipe(load_recipe(write_tiny_recipe(tmp_path, tmp_path / "out", tmp_path / "cache"),
                                       ["train.max_steps=2"]), registry)
    tokenizer = registry.build("text_encoder", "tiny_t5", checked.components["text_encoder"]).tokenize
    records: list[dict] = []
    parts = setup_training(checked, registry, TrainOptions(data_source=SyntheticClips(tokenizer), log=records.append))
    assert parts.flops is None  # a CPU run counts nothing
    parts.flops = StepFlops(planned_model(checked, registry), peak_tflops=1.0)
    train(parts)
    assert len(records) == 2 and all(r["tflops"] > 0 and r["mfu"] == r["tflops"] for r in records)
