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
