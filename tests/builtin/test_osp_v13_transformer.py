"""The OSP v1.3 transformer plugin: golden parity with the reference, invariances, Skiparse, loading, meta build."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from safetensors.torch import load_file

import osctl
from osctl.geometry import ModelGeometry
from osctl.plugin_manager import default_registry
from osctl_builtin.models.osp_v13.presets import default_sparse_blocks, resolve_sparse_blocks
from osctl_builtin.models.osp_v13.transformer import (
    OpenSoraT2V_v1_3,
    SkiparseMode,
    skiparse_merge,
    skiparse_split,
)

torch.set_num_threads(2)

FIXTURES = ("a1_sparse1d_n4", "a2_dense")
CASES = ("image_t1", "video_t3", "video_pad", "video_latent_mask")
ATOL, RTOL = 2e-5, 1e-4


def build(options: dict[str, Any], **runtime: Any) -> Any:
    """Build the model through the registered plugin factory, as osctl commands do."""
    return default_registry().build("model", "opensora_v1_3", options, **runtime)


@cache
def golden_model(folder: str) -> Any:
    model = build({"path": folder})
    return model.eval()


def tiny(**overrides: Any) -> Any:
    torch.manual_seed(0)
    return build({"preset": "tiny", **overrides})


def tiny_inputs(b: int = 2, t: int = 3, h: int = 8, w: int = 10, n_text: int = 7, seed: int = 3) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    text_mask = torch.ones(b, 1, n_text)
    text_mask[0, 0, n_text - 2:] = 0
    return {
        "hidden_states": torch.randn(b, 8, t, h, w, generator=gen),
        "timestep": torch.linspace(10.0, 900.0, b),
        "encoder_hidden_states": torch.randn(b, 1, n_text, 32, generator=gen),
        "attention_mask": torch.ones(b, t, h, w),
        "encoder_attention_mask": text_mask,
    }


def run(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    return model(**inputs, return_dict=False)[0]


# ---------------------------------------------------------------------------------------------------
# golden parity
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fixture", FIXTURES)
def test_golden_outputs(golden: Path, fixture: str, case: str) -> None:
    model = golden_model(str(golden / "dit" / fixture / "model"))
    inputs = load_file(golden / "dit" / fixture / case / "inputs.safetensors")
    expected = load_file(golden / "dit" / fixture / case / "outputs.safetensors")["sample"]
    with torch.no_grad():
        got = run(model, inputs)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_golden_intermediates(golden: Path, fixture: str) -> None:
    model = golden_model(str(golden / "dit" / fixture / "model"))
    inputs = load_file(golden / "dit" / fixture / "video_pad" / "inputs.safetensors")
    expected = load_file(golden / "dit" / fixture / "video_pad" / "intermediates.safetensors")
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str, pick: Any = lambda out: out) -> Any:
        return lambda _m, _i, out: seen.__setitem__(name, pick(out).detach().clone())

    hooks = [
        model.pos_embed.register_forward_hook(keep("patch_embed")),
        model.adaln_single.register_forward_hook(keep("adaln_single_6d", lambda out: out[0])),
        model.adaln_single.register_forward_hook(keep("embedded_timestep", lambda out: out[1])),
        model.caption_projection.register_forward_hook(keep("caption_projection")),
        *(block.register_forward_hook(keep(f"block_{i:02d}_out")) for i, block in enumerate(model.transformer_blocks)),
    ]
    try:
        with torch.no_grad():
            seen["output"] = run(model, inputs)
    finally:
        for hook in hooks:
            hook.remove()
    assert set(seen) == set(expected)
    for name, want in expected.items():
        torch.testing.assert_close(seen[name].reshape(want.shape), want, atol=ATOL, rtol=RTOL, msg=name)


def test_golden_weights_load_without_missing_or_unexpected_keys(golden: Path) -> None:
    for fixture in FIXTURES:
        _, info = OpenSoraT2V_v1_3.from_pretrained(golden / "dit" / fixture / "model", output_loading_info=True)
        assert not any(info.values()), info


def test_reference_sparse_layout_on_32_layers(golden: Path) -> None:
    sparse = golden_model(str(golden / "dit" / "a1_sparse1d_n4" / "model"))
    modes = [block.skiparse for block in sparse.transformer_blocks]
    assert modes[:2] == [None, None] and modes[30:] == [None, None]
    assert all(modes[i] == SkiparseMode(4, group=i % 2 == 1) for i in range(2, 30))
    dense = golden_model(str(golden / "dit" / "a2_dense" / "model"))
    assert all(block.skiparse is None for block in dense.transformer_blocks)


def test_masked_text_tokens_have_no_effect(golden: Path) -> None:
    model = golden_model(str(golden / "dit" / "a1_sparse1d_n4" / "model"))
    inputs = load_file(golden / "dit" / "a1_sparse1d_n4" / "video_pad" / "inputs.safetensors")
    changed = dict(inputs)
    masked = inputs["encoder_attention_mask"][:, 0] == 0  # B x L
    assert masked.any()
    states = inputs["encoder_hidden_states"].clone()
    states[:, 0][masked] = 100.0
    changed["encoder_hidden_states"] = states
    with torch.no_grad():
        diff = (run(model, inputs) - run(model, changed)).abs().max().item()
    assert diff <= 1e-6


def test_padded_latent_positions_do_not_change_valid_outputs(golden: Path) -> None:
    """Latents under a zero mask (whole patches) do not leak into other tokens (Skiparse k=4, 32 blocks)."""
    model = golden_model(str(golden / "dit" / "a1_sparse1d_n4" / "model"))
    inputs = load_file(golden / "dit" / "a1_sparse1d_n4" / "video_latent_mask" / "inputs.safetensors")
    invalid = inputs["attention_mask"] == 0  # B x T x H x W, zero regions are patch-aligned in this case
    assert invalid.any()
    changed = dict(inputs)
    noise = torch.randn(inputs["hidden_states"].shape, generator=torch.Generator().manual_seed(5))
    changed["hidden_states"] = torch.where(invalid[:, None], noise, inputs["hidden_states"])
    with torch.no_grad():
        a, b = run(model, inputs), run(model, changed)
    valid = (~invalid)[:, None].expand_as(a)
    assert (a - b)[~valid].abs().max() > 1e-3  # the padded outputs themselves do change
    torch.testing.assert_close(a[valid], b[valid], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------
# behaviour on the tiny preset
# ---------------------------------------------------------------------------------------------------


def test_tiny_preset_layout() -> None:
    model = tiny()
    assert [b.skiparse for b in model.transformer_blocks] == [None, SkiparseMode(4, True), SkiparseMode(4, False), None]
    assert model.sparse_block_indices == [1, 2]
    # without an explicit list a 4-block model follows the reference rule: blocks 2 (single) and 3 (group)
    reference_rule = tiny(sparse_blocks=None)
    assert [b.skiparse for b in reference_rule.transformer_blocks][2:] == [SkiparseMode(4, False), SkiparseMode(4, True)]


def test_default_sparse_blocks_rule() -> None:
    assert default_sparse_blocks(32) == list(range(2, 30))  # the reference: blocks 2..29 whatever the depth
    assert default_sparse_blocks(36) == list(range(2, 30))
    assert default_sparse_blocks(4) == [2, 3]
    assert default_sparse_blocks(2) == []
    assert resolve_sparse_blocks(32, False, None) == []
    assert resolve_sparse_blocks(8, True, [5, 0]) == [0, 5]
    with pytest.raises(ValueError, match="outside the valid block indices"):
        resolve_sparse_blocks(4, True, [4])


@pytest.mark.parametrize("group", [False, True])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_skiparse_regrouping(k: int, group: bool) -> None:
    b, s = 2, 2 * k * k
    tokens = torch.arange(s).repeat(b, 1) + 100 * torch.arange(b)[:, None]  # B x S: value = 100*b + j
    split = skiparse_split(tokens, SkiparseMode(k, group))  # (k*B) x S/k
    assert split.shape == (k * b, s // k)
    for sub in range(k):
        for bi in range(b):
            row = split[sub * b + bi] - 100 * bi
            if group:  # j = n*k^2 + m*k + r goes to sub-sequence m at position n*k + r
                want = torch.tensor([n * k * k + sub * k + r for n in range(s // (k * k)) for r in range(k)])
            else:  # j goes to sub-sequence j mod k at position j // k
                want = torch.arange(sub, s, k)
            assert torch.equal(row, want)
    assert torch.equal(skiparse_merge(split, SkiparseMode(k, group), b), tokens)


def test_batched_equals_looped() -> None:
    model = tiny().eval()
    inputs = tiny_inputs(b=3)
    inputs["attention_mask"][1, -1, :, 6:] = 0
    with torch.no_grad():
        batched = run(model, inputs)
        for i in range(3):
            single = run(model, {k: v[i : i + 1] for k, v in inputs.items()})
            torch.testing.assert_close(single, batched[i : i + 1], atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_exact(tmp_path: Path) -> None:
    model = tiny(sparse_n=2, sparse_blocks=[0, 3]).eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        before = run(model, inputs)
    for name, kwargs in (("single", {}), ("sharded", {"max_shard_size": "100KB"})):
        folder = tmp_path / name
        model.save_pretrained(folder, **kwargs)
        if name == "sharded":
            assert (folder / "diffusion_pytorch_model.safetensors.index.json").is_file()
        config = json.loads((folder / "config.json").read_text())
        assert config["_class_name"] == "OpenSoraT2V_v1_3" and config["sparse_blocks"] == [0, 3]
        loaded = build({"path": str(folder)}).eval()
        assert loaded.sparse_block_indices == [0, 3]
        with torch.no_grad():
            assert torch.equal(run(loaded, inputs), before)


def test_gradient_checkpointing_same_loss_and_grads() -> None:
    inputs = tiny_inputs()
    results = []
    for checkpointing in (False, True):
        model = tiny(gradient_checkpointing=checkpointing).train()
        assert model.gradient_checkpointing is checkpointing
        calls: list[int] = []
        model.transformer_blocks[1].register_forward_pre_hook(lambda *_, seen=calls: seen.append(1))
        loss = run(model, inputs).square().mean()
        loss.backward()
        assert len(calls) == (2 if checkpointing else 1)  # checkpointed blocks run again in backward
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, atol=0, rtol=0)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, atol=1e-7, rtol=1e-6, msg=name)


def test_tiny_custom_sparse_blocks_forward_backward() -> None:
    model = tiny(sparse_n=2, sparse_blocks=[0, 3], num_layers=5).train()
    assert [b.skiparse for b in model.transformer_blocks] == [
        SkiparseMode(2, False), None, None, SkiparseMode(2, True), None
    ]
    inputs = tiny_inputs(t=2, h=6, w=6)  # 18 tokens: padded to 20 in the k=2 blocks
    out = run(model, inputs)
    assert out.shape == inputs["hidden_states"].shape
    out.square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert model.transformer_blocks[3].attn1.to_q.weight.grad.abs().sum() > 0


def test_skiparse_changes_the_result_and_k1_equals_dense() -> None:
    inputs = tiny_inputs()
    with torch.no_grad():
        dense = run(tiny(sparse1d=False).eval(), inputs)
        k1 = run(tiny(sparse_n=1).eval(), inputs)
        k4 = run(tiny().eval(), inputs)
    torch.testing.assert_close(k1, dense, atol=1e-6, rtol=1e-6)
    assert (k4 - dense).abs().max() > 1e-3


def test_bf16_autocast_close_to_fp32() -> None:
    model = tiny().eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        ref = run(model, inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = run(model, inputs)
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() / ref.abs().max() < 0.05
    with torch.no_grad():
        half = run(tiny(sparse_n=2).to(torch.bfloat16).eval(), inputs)  # bf16 weights, masks cast inside
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()


def test_scalar_timestep_and_3d_text_are_accepted() -> None:
    model = tiny().eval()
    inputs = tiny_inputs(b=2)
    with torch.no_grad():
        ref = run(model, {**inputs, "timestep": torch.tensor([5.0, 5.0])})
        got = model(inputs["hidden_states"], 5, inputs["encoder_hidden_states"][:, 0],
                    attention_mask=inputs["attention_mask"], encoder_attention_mask=inputs["encoder_attention_mask"][:, 0],
                    return_dict=True).sample
    torch.testing.assert_close(got, ref, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------
# building, configs and errors
# ---------------------------------------------------------------------------------------------------


def test_meta_build_of_released_preset_allocates_nothing() -> None:
    rss_before = psutil.Process().memory_info().rss
    model = build({"preset": "2B/122"}, meta=True)
    rss_after = psutil.Process().memory_info().rss
    params = list(model.parameters())
    assert all(p.is_meta for p in params)
    assert 2.7e9 <= sum(p.numel() for p in params) <= 2.8e9
    assert rss_after - rss_before < 512 * 2**20  # 2.77 B fp32 parameters would be ~11 GB
    assert model.sparse_block_indices == list(range(2, 30))
    assert model.config.cross_attention_dim == 2304 and model.config.caption_channels == 4096


def test_meta_build_from_folder(golden: Path) -> None:
    model = build({"path": str(golden / "dit" / "a1_sparse1d_n4" / "model")}, meta=True)
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 1_244_816


def test_config_declares_its_geometry_without_torch(golden: Path, tmp_path: Path) -> None:
    registry = default_registry()
    folder = golden / "dit" / "a2_dense" / "model"
    config = registry.make_config("model", "opensora_v1_3", {"model_path": str(folder)}, where="model")
    assert config.path.endswith("model")
    released = json.loads((folder / "config.json").read_text())
    assert config.model_geometry() == ModelGeometry(patch_t=released["patch_size_t"], patch_hw=released["patch_size"],
                                                    in_channels=released["in_channels"],
                                                    out_channels=released["out_channels"])
    preset = registry.make_config("model", "OpenSoraT2V_v1_3", {"preset": "tiny"}, where="model")
    assert preset.model_geometry() == ModelGeometry(patch_t=1, patch_hw=2, in_channels=8, out_channels=8)
    wide = registry.make_config("model", "opensora_v1_3", {"preset": "tiny", "in_channels": 48, "out_channels": 48},
                                where="model")
    assert wide.model_geometry() == ModelGeometry(patch_t=1, patch_hw=2, in_channels=48, out_channels=48)
    # a folder's config.json decides (out_channels null: the transformer's rule, out = in), the preset only
    # stands in until the folder is downloaded
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({**released, "patch_size": 4, "in_channels": 16,
                                                            "out_channels": None}))
    assert registry.make_config("model", "opensora_v1_3", {"path": str(tmp_path / "m")}, where="model"
                                ).model_geometry() == ModelGeometry(patch_t=1, patch_hw=4, in_channels=16, out_channels=16)
    not_yet = registry.make_config("model", "opensora_v1_3", {"path": str(tmp_path / "later")}, where="model")
    assert not_yet.model_geometry() == ModelGeometry(patch_t=1, patch_hw=2, in_channels=8, out_channels=8)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"preset": "huge"}, "unknown preset"),
        ({"preset": "tiny", "attention_head_dim": 20}, "attention_head_dim=20 must be a positive multiple of 6"),
        ({"preset": "tiny", "sparse_blocks": [9]}, "sparse_blocks contains [9]"),
        ({"preset": "tiny", "sparse1d": False, "sparse_blocks": [1]}, "sparse1d is false"),
        ({"preset": "tiny", "sparse_n": 0}, "sparse_n"),
        ({"preset": "tiny", "abs_pos_embed": "sincos"}, "abs_pos_embed='sincos' is not known"),
        ({"preset": "tiny", "abs_pos_embed": "learned"}, "abs_pos_max_size=None must be three positive integers"),
        ({"preset": "tiny", "abs_pos_embed": "learned", "abs_pos_max_size": [3, 4]}, "abs_pos_max_size=[3, 4]"),
        ({"preset": "tiny", "rope": False}, "rope=false leaves the model without any token positions"),
    ],
)
def test_bad_configs_are_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(osctl.ConfigError) as err:
        default_registry().make_config("model", "opensora_v1_3", options, where="model")
    assert message in str(err.value)


def test_bad_paths_are_config_errors(golden: Path, tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text(json.dumps({"_class_name": "OpenSoraT2V_v1_3"}))
    cases = [
        (tmp_path / "missing", "is not a folder"),
        (golden / "dit" / "a1_sparse1d_n4", "has no config.json"),
        (tmp_path / "broken", "cannot read"),
        (golden / "vae" / "vae", "not an OpenSoraT2V_v1_3"),
        (tmp_path / "no_weights", "no diffusion_pytorch_model weights"),
    ]
    for path, message in cases:
        with pytest.raises(osctl.ConfigError) as err:
            build({"path": str(path)})
        assert message in err.value.message and str(path) in err.value.message
        assert err.value.hint
    with pytest.raises(osctl.ConfigError, match="conflicts with num_layers=32"):
        build({"path": str(golden / "dit" / "a1_sparse1d_n4" / "model"), "num_layers": 4})
    # a released config.json has no absolute position table: asking for one must not be ignored silently
    with pytest.raises(osctl.ConfigError, match=r"model\.abs_pos_embed=learned conflicts with abs_pos_embed=None"):
        build({"path": str(golden / "dit" / "a1_sparse1d_n4" / "model"), "abs_pos_embed": "learned",
               "abs_pos_max_size": [4, 4, 4]})
    # nor can RoPE be switched off on it: the model would have no token positions at all
    with pytest.raises(osctl.ConfigError, match="rope=false leaves the model without any token positions"):
        build({"path": str(golden / "dit" / "a1_sparse1d_n4" / "model"), "rope": False})


def test_runtime_overrides_apply_to_a_loaded_model(golden: Path) -> None:
    model = build({"path": str(golden / "dit" / "a1_sparse1d_n4" / "model"), "sparse_n": 2, "sparse_blocks": [3, 4]})
    assert [b.skiparse for b in model.transformer_blocks[2:6]] == [None, SkiparseMode(2, True), SkiparseMode(2, False), None]


def test_forward_input_errors() -> None:
    model = tiny().eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        with pytest.raises(ValueError, match="not a multiple of patch_size=2"):
            run(model, {**inputs, "hidden_states": inputs["hidden_states"][..., :9],
                        "attention_mask": inputs["attention_mask"][..., :9]})
        with pytest.raises(ValueError, match="attention_mask covers"):
            run(model, {**inputs, "attention_mask": inputs["attention_mask"][:, :2]})
        with pytest.raises(ValueError, match="timestep has 3 values"):
            run(model, {**inputs, "timestep": torch.ones(3)})


# ---------------------------------------------------------------------------------------------------
# optional learned absolute positions (osctl extension; v1.3 has RoPE only)
# ---------------------------------------------------------------------------------------------------

ABS = {"abs_pos_embed": "learned", "abs_pos_max_size": [4, 5, 6]}


def test_abs_positions_are_off_by_default_and_a_zero_table_changes_nothing() -> None:
    plain = tiny().eval()
    assert not hasattr(plain, "abs_pos_table") and plain.config.abs_pos_embed is None
    with_table = tiny(**ABS).eval()
    assert with_table.abs_pos_table.shape == (4, 5, 6, 48)
    missing, unexpected = with_table.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["abs_pos_table"] and unexpected == []
    inputs = tiny_inputs(t=3, h=8, w=10)  # 3 x 4 x 5 tokens: a corner of the 4 x 5 x 6 table
    with torch.no_grad():
        with_table.abs_pos_table.zero_()
        torch.testing.assert_close(run(with_table, inputs), run(plain, inputs), atol=0, rtol=0)
        with_table.abs_pos_table[2, 3, 4].fill_(1.0)  # the vector of frame 2, row 3, column 4 only
        changed = (run(with_table, inputs) - run(plain, inputs)).abs().amax(dim=(0, 1))  # T x H x W latents
    assert changed[2, 6:8, 8:10].min() > 0  # that token's own 2x2 latent patch changes ...
    assert changed.sum() > changed[2, 6:8, 8:10].sum()  # ... and, through attention, other tokens too


def test_abs_positions_are_indexed_by_frame_row_and_column() -> None:
    model = tiny(**ABS)
    table = model.abs_pos_table
    picked = model._abs_positions(1, 2, 3, 4, 5)  # frames 1-2 of a 3-frame video, 4 x 5 tokens
    assert picked.shape == (2 * 4 * 5, 48)
    assert torch.equal(picked[0], table[1, 0, 0]) and torch.equal(picked[4 * 5 + 5 + 2], table[2, 1, 2])


def test_abs_positions_learn_and_round_trip(tmp_path: Path) -> None:
    model = tiny(**ABS)
    run(model, tiny_inputs()).square().mean().backward()
    assert model.abs_pos_table.grad is not None and model.abs_pos_table.grad[:3, :4, :5].abs().sum() > 0
    assert model.abs_pos_table.grad[3:].abs().sum() == 0  # frames the input does not have get no gradient
    model.eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        before = run(model, inputs)
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["abs_pos_embed"] == "learned" and config["abs_pos_max_size"] == [4, 5, 6]
    loaded = build({"path": str(tmp_path / "m")}).eval()
    with torch.no_grad():
        assert torch.equal(run(loaded, inputs), before)


def test_a_grid_larger_than_the_abs_table_is_refused() -> None:
    model = tiny(**ABS).eval()
    with torch.no_grad(), pytest.raises(ValueError, match=r"5x4x5 tokens .* exceeds abs_pos_max_size=\[4, 5, 6\]"):
        run(model, tiny_inputs(t=5))


INTERP = {"abs_pos_embed": "learned_interpolated", "abs_pos_max_size": [3, 5, 5]}


def test_interpolated_abs_positions_mark_the_same_fraction_of_every_grid() -> None:
    model = tiny(**INTERP)
    table = model.abs_pos_table.detach()
    full = model._abs_positions(0, 3, 3, 5, 5).detach().reshape(3, 5, 5, -1)
    assert torch.equal(full, table)  # the table's own size: the table itself, untouched
    small = model._abs_positions(0, 2, 2, 3, 3).detach().reshape(2, 3, 3, -1)  # fewer frames, rows, columns
    for t, r, c in ((0, 0, 0), (1, 2, 2), (0, 2, 0), (1, 0, 2)):  # corners map to corners ...
        torch.testing.assert_close(small[t, r, c], table[2 * t, 2 * r, 2 * c])
    torch.testing.assert_close(small[0, 1, 1], table[0, 2, 2])  # ... and the centre to the centre
    wide = model._abs_positions(0, 3, 3, 5, 9).detach().reshape(3, 5, 9, -1)  # larger grids are resampled too
    torch.testing.assert_close(wide[:, :, 1], (table[:, :, 0] + table[:, :, 1]) / 2)
    last = model._abs_positions(1, 1, 2, 3, 3).detach().reshape(1, 3, 3, -1)  # a rank's share of the frames
    torch.testing.assert_close(last[0], small[1])


def test_interpolated_abs_positions_learn_from_any_grid() -> None:
    model = tiny(**INTERP)
    run(model, tiny_inputs(t=4, h=8, w=8)).square().mean().backward()  # 4 x 4 x 4 tokens from a 3 x 5 x 5 table
    grad = model.abs_pos_table.grad
    assert grad is not None and (grad.abs().sum(-1) > 0).all()  # every entry helps place some token
    model.eval()
    with torch.no_grad():
        assert run(model, tiny_inputs(t=5, h=12, w=12)).shape[2:] == (5, 12, 12)  # no size limit


# ---------------------------------------------------------------------------------------------------
# RoPE switch (osctl option; v1.3 always rotates)
# ---------------------------------------------------------------------------------------------------

NO_ROPE = {**INTERP, "rope": False}


def test_rope_is_on_by_default_and_saved_in_config(tmp_path: Path) -> None:
    assert tiny().config.rope is True
    model = tiny(**NO_ROPE).eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        before = run(model, inputs)
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["rope"] is False
    loaded = build({"path": str(tmp_path / "m")}).eval()
    assert loaded.config.rope is False
    with torch.no_grad():
        assert torch.equal(run(loaded, inputs), before)


def test_rope_off_is_the_same_model_with_unrotated_queries_and_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    import osctl_builtin.models.osp_v13.transformer as module

    rotated = tiny(**INTERP).eval()
    plain = tiny(**NO_ROPE).eval()
    plain.load_state_dict(rotated.state_dict())  # same parameters: RoPE has none
    inputs = tiny_inputs()
    with torch.no_grad():
        with_rope, without = run(rotated, inputs), run(plain, inputs)
        assert (with_rope - without).abs().max() > 1e-3  # the rotation matters ...

        def unrotated(frames: int, height: int, width: int, head_dim: int, scales: Any, device: Any) -> Any:
            n = frames * height * width
            return torch.ones(n, head_dim, device=device), torch.zeros(n, head_dim, device=device)

        monkeypatch.setattr(module, "rope_3d_tables", unrotated)
        torch.testing.assert_close(run(rotated, inputs), without)  # ... and rope=False skips exactly it
