"""Adapters others load, and sampling with them.

Wan (a diffusers ``ModelMixin`` family; osctl's wan plugin is not there yet, so the test builds a tiny
``WanTransformer3DModel`` itself): an adapter trained and saved by osctl's LoRA code loads with
``WanPipeline.load_lora_weights`` and denoises exactly as osctl's sampling merge (``sample.loras``) does;
its ComfyUI conversion loads back into diffusers (which reads ComfyUI's Wan naming) with the same result;
``ckpt convert --merge-lora`` equals base + adapter.

Open-Sora-Plan v1.3 (tiny): ``osctl sample --checkpoint`` of a LoRA checkpoint (base from the recipe's
``train.pretrained``, adapter from the checkpoint) equals sampling the ``--merge-lora`` output, and
``--lora PATH:0`` is the base itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from osctl.cli import app
from tests.integration.train_worker import run_job

pytestmark = pytest.mark.slow
runner = CliRunner()
WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
           text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
           rope_max_seq_len=32)


def wan_base() -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(**WAN).eval()


def denoise(transformer: torch.nn.Module, lora: Path | None = None) -> torch.Tensor:
    """Latents of a 2-step WanPipeline run (fixed text embeddings and seed), optionally after load_lora_weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=None,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    g = torch.Generator().manual_seed(3)
    text, negative = torch.randn(1, 8, 16, generator=g), torch.randn(1, 8, 16, generator=g)
    with torch.no_grad():
        return pipe(prompt_embeds=text, negative_prompt_embeds=negative, height=32, width=32, num_frames=5,
                    num_inference_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(1),
                    output_type="latent").frames


@pytest.fixture(scope="module")
def wan_adapter(tmp_path_factory) -> Path:
    """A rank-4 adapter trained by osctl's LoRA code (3 AdamW steps through the single strategy) on a tiny Wan."""
    from types import SimpleNamespace

    from osctl.train.lora import add_adapter, save_checkpoint_adapters, spec_from_settings
    from osctl.train.lora import base_fingerprint as fingerprint
    from osctl.train.optim import build_lr_scheduler, build_optimizer
    from osctl_builtin.strategies.torch_native import SingleStrategy

    folder = tmp_path_factory.mktemp("wan")
    model = wan_base().train()
    settings = SimpleNamespace(rank=4, alpha=8.0, dropout=0.0, target_modules=None, init="default")
    spec = spec_from_settings(settings, model)
    spec.base_fingerprint = fingerprint(model.state_dict())
    add_adapter(model, spec)
    train_cfg = SimpleNamespace(optimizer="adamw", learning_rate=5e-2, adam_beta1=0.9, adam_beta2=0.999,
                                adam_weight_decay=0.0, adam_epsilon=1e-8, lr_scheduler="constant", lr_warmup_steps=0)
    strategy = SingleStrategy(mixed_precision="fp32")
    strategy.prepare(model, optimizer_factory=lambda p: build_optimizer(p, train_cfg),
                     lr_scheduler_factory=lambda o: build_lr_scheduler(o, train_cfg, 3))
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        latents, text = torch.randn(1, 16, 2, 4, 4, generator=g), torch.randn(1, 8, 16, generator=g)
        out = strategy.model(latents, torch.tensor([500]), text, return_dict=False)[0]
        strategy.backward(((out - latents) ** 2).mean())
        strategy.optimizer_step()
    save_checkpoint_adapters(folder, strategy, None, spec, is_main=True, step=3)
    return folder / "adapter" / "pytorch_lora_weights.safetensors"


def test_diffusers_loads_the_adapter_and_matches_osctl_sampling(wan_adapter):
    from osctl.recipe.schema import LoraRef
    from osctl.sample.run import apply_loras

    base = denoise(wan_base())
    theirs = denoise(wan_base(), lora=wan_adapter)
    model = wan_base()
    applied = apply_loras(model, [LoraRef(path=wan_adapter)])
    ours = denoise(model)
    assert applied[0]["rank"] == 4 and applied[0]["alpha"] == 8.0
    assert (theirs - base).abs().max() > 1e-3  # the adapter does something
    assert (theirs - ours).abs().max() <= 1e-4


def test_comfyui_conversion_and_merge(wan_adapter, tmp_path):
    from osctl.ckpt.adapters import merge_lora, to_comfyui

    # ComfyUI's naming of Wan: diffusion_model.<original Wan module>.lora_down/lora_up/alpha
    comfy = tmp_path / "comfy.safetensors"
    to_comfyui(wan_adapter, comfy)
    keys = set(load_file(comfy))
    assert "diffusion_model.blocks.0.self_attn.q.lora_down.weight" in keys
    assert {"diffusion_model.blocks.1.cross_attn.o.lora_up.weight", "diffusion_model.blocks.0.ffn.2.alpha"} <= keys
    assert (denoise(wan_base(), lora=comfy) - denoise(wan_base(), lora=wan_adapter)).abs().max() <= 1e-5

    # --merge-lora: merged weights == base + adapter
    base_dir = tmp_path / "base"
    wan_base().save_pretrained(base_dir)
    merge_lora(base_dir, wan_adapter, tmp_path / "merged")
    from diffusers import WanTransformer3DModel

    merged = WanTransformer3DModel.from_pretrained(tmp_path / "merged").eval()
    assert (denoise(merged) - denoise(wan_base(), lora=wan_adapter)).abs().max() <= 1e-4


def test_inspect_identifies_the_adapter(wan_adapter):
    result = runner.invoke(app, ["ckpt", "inspect", str(wan_adapter), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)["adapter"]
    assert facts["rank"] == 4 and facts["alpha"] == 8.0 and facts["base"]["class"] == "WanTransformer3DModel"
    assert facts["base"]["fingerprint"].startswith("sha256:") and "to_q" in facts["target_modules"]


@pytest.fixture(scope="module")
def osp_lora(tmp_path_factory) -> tuple[Path, Path]:
    """(base folder, LoRA checkpoint): a tiny v1.3 trained 2 steps, then a LoRA on it (train.pretrained)."""
    root = tmp_path_factory.mktemp("osp")
    steps = ["train.max_steps=2", "train.checkpointing_steps=2"]
    base = Path(run_job({"kind": "train", "name": "base", "sets": steps, "batch": 2}, root)["out"])
    base_dir = base / "checkpoint-2" / "model"
    lora = run_job({"kind": "train", "name": "lora", "batch": 2, "sets": [
        *steps, "train.lora={rank: 4, alpha: 4, init: random}", f"train.pretrained={base_dir}"]}, root)
    return base_dir, Path(lora["out"]) / "checkpoint-2"


def sample_latents(args: list[str], out: Path) -> torch.Tensor:
    result = runner.invoke(app, ["sample", *args, "-p", "clip number 1", "--seed", "5", "-o", str(out),
                                 "--set", "sample.save_latents=true"])
    assert result.exit_code == 0, result.output
    return load_file(next(out.glob("*.latents.safetensors")))["latents"]


def test_osp_lora_checkpoint_sampling_equals_merged_weights(osp_lora, tmp_path):
    base_dir, checkpoint = osp_lora
    result = runner.invoke(app, ["ckpt", "convert", str(base_dir), "--merge-lora", str(checkpoint), "-o",
                                 str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    recipe = ["--recipe", str(checkpoint / "recipe.yaml")]
    with_adapter = sample_latents(["--checkpoint", str(checkpoint)], tmp_path / "a")
    merged = sample_latents([*recipe, "--model-path", str(tmp_path / "merged")], tmp_path / "m")
    base = sample_latents([*recipe, "--model-path", str(base_dir)], tmp_path / "b")
    off = sample_latents([*recipe, "--model-path", str(base_dir), "--lora", f"{checkpoint}:0"], tmp_path / "o")
    assert (with_adapter - merged).abs().max() <= 1e-5
    assert (with_adapter - base).abs().max() > 1e-4
    assert torch.equal(off, base)
    sidecar = json.loads(next((tmp_path / "a").glob("*.json")).read_text())
    assert sidecar["components"]["loras"][0]["path"].endswith("adapter_ema/pytorch_lora_weights.safetensors")


def test_comfyui_conversion_of_v13_says_there_is_none(osp_lora):
    result = runner.invoke(app, ["ckpt", "convert", str(osp_lora[1] / "adapter"), "--to", "comfyui-lora"])
    assert result.exit_code == 2
    assert "OpenSoraT2V_v1_3, which has no ComfyUI LoRA naming" in result.output


WAN_RECIPE = """
pipeline_path: {pipe}
model: {{name: wan}}
autoencoder: {{name: wan_vae}}
text_encoder: {{name: t5, max_length: 32, prompt_clean: wan}}
data: {{num_frames: 9, hw_stride: 16, max_height: 32, max_width: 32}}
diffusion: {{objective: flow_matching, flow_shift: 3.0, weighting_scheme: logit_normal}}
train: {{output_dir: {out}, max_steps: 2, train_batch_size: 2, learning_rate: 1.0e-2, mixed_precision: fp32,
        checkpointing_steps: 100, log_interval: 1, seed: 3, lora: {{rank: 4, alpha: 8, init: random}}}}
parallel: {{strategy: single}}
sample: {{num_frames: 9, height: 32, width: 32, num_sampling_steps: 4, sample_method: UniPCMultistep,
         sampler_options: {{flow_shift: 3.0}}, guidance_scale: 5.0, negative_prompt: "blurry", save_latents: true,
         dtype: fp32}}
"""


def test_wan_lora_trained_by_osctl_loads_in_diffusers_like_osctl_sample(tmp_path, monkeypatch):
    """The Wan plugin end to end: `osctl train` with train.lora -> adapter/ -> WanPipeline.load_lora_weights gives
    the latents `osctl sample --lora` gives (same prompt and seed, <= 1e-4)."""
    import subprocess
    import sys

    from diffusers import WanPipeline

    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.run import TrainOptions, run_training
    from tests.train_helpers import SyntheticClips
    from tests.wan_helpers import ensure_wan_plugins, subprocess_env, tiny_pipeline, wan_registry

    pipe = tiny_pipeline(tmp_path / "pipe")
    recipe = tmp_path / "wan.yaml"
    recipe.write_text(WAN_RECIPE.format(pipe=pipe, out=tmp_path / "out"))
    registry = wan_registry()
    checked = check_recipe(load_recipe(recipe), registry)
    text = registry.build("text_encoder", "t5", checked.components["text_encoder"])
    run_training(checked, registry, TrainOptions(data_source=SyntheticClips(text.tokenize, frames=9, size=32)))
    adapter = tmp_path / "out" / "checkpoint-2" / "adapter" / "pytorch_lora_weights.safetensors"
    assert all(k.startswith("transformer.blocks.") for k in load_file(adapter))

    site = ensure_wan_plugins(monkeypatch, tmp_path / "site")
    samples = tmp_path / "samples"
    proc = subprocess.run([sys.executable, "-m", "osctl", "sample", "--recipe", str(recipe), "--lora",
                           str(adapter.parent), "-p", "a red ball", "--seed", "11", "-o", str(samples)],
                          cwd=Path(__file__).resolve().parents[2], env=subprocess_env(site), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sidecar = json.loads(next(samples.glob("0000-00-*.json")).read_text())
    ours = load_file(samples / sidecar["latents_file"])["latents"]

    pipeline = WanPipeline.from_pretrained(pipe)
    pipeline.load_lora_weights(str(adapter))
    theirs = pipeline(sidecar["prompt"], sidecar["negative_prompt"], num_frames=9, height=32, width=32,
                      num_inference_steps=4, guidance_scale=5.0, output_type="latent",
                      generator=torch.Generator().manual_seed(sidecar["seed"])).frames[0]
    base = WanPipeline.from_pretrained(pipe)(sidecar["prompt"], sidecar["negative_prompt"], num_frames=9, height=32,
                                             width=32, num_inference_steps=4, guidance_scale=5.0,
                                             output_type="latent",
                                             generator=torch.Generator().manual_seed(sidecar["seed"])).frames[0]
    assert (theirs - base).abs().max() > 1e-3  # the adapter changes the video
    assert (ours - theirs).abs().max() <= 1e-4
