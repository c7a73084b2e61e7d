"""Every hook in osctl/hookspecs.py is documented, implemented by a built-in, and exercised here (datasette's way).

The meta tests read the hook specifications from ``osctl.hookspecs`` itself: a new hook fails them until
``plugins/README.md`` documents it, a built-in implements it (or :data:`NO_BUILT_IN` says why none
does) and a ``test_hook_<name>`` below calls it through the plugin manager and uses what it gives.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer

import osctl
from osctl import hookspecs
from osctl.build import build_strategy
from osctl.curate.clip import clip_from_record
from osctl.errors import ConfigError
from osctl.plugin_manager import build_registry, default_plugin_manager, find_plugins, new_plugin_manager
from osctl.protocols import CONTRACTS, check_contract
from osctl.recipe.load import load_recipe
from osctl.recipe.validate import check_recipe
from osctl.testing import write_tiny_recipe

REPO = Path(__file__).resolve().parents[2]
HOOKS = sorted(name for name, value in vars(hookspecs).items()
               if callable(value) and hasattr(value, f"{hookspecs.PROJECT}_spec"))
#: hooks no built-in implements, and why
NO_BUILT_IN = {
    "register_commands": "osctl's own commands are its command line (osctl/cli); the hook is for third-party "
                         "plugins (tests/fixtures/osctl_hello adds one)",
}


@pytest.fixture(scope="module")
def registry() -> Any:
    return build_registry(default_plugin_manager())


def _built_in_names(registry: Any, kind: str) -> list[str]:
    builtin = {plugin.name for plugin in find_plugins() if plugin.builtin}
    return [name for name in registry.names(kind) if registry.get(kind, name).provider.plugin in builtin]


# --- the meta tests ----------------------------------------------------------------------------------

def test_hookspecs_are_found():
    assert len(HOOKS) >= 10 and "register_models" in HOOKS and "register_commands" in HOOKS
    assert set(hookspecs.KIND_HOOKS.values()) <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_in_plugins_readme(hook):
    readme = (REPO / "plugins" / "README.md").read_text(encoding="utf-8")
    assert re.search(rf"^\| `{hook}\(", readme, re.MULTILINE), f"plugins/README.md's hook table lacks {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_implemented_by_a_built_in(hook):
    builtin = {plugin.name for plugin in find_plugins() if plugin.builtin}
    implementers = {impl.plugin_name for impl in getattr(default_plugin_manager().hook, hook).get_hookimpls()}
    if hook in NO_BUILT_IN:
        assert not implementers & builtin, f"{hook} has a built-in now: drop it from NO_BUILT_IN"
    else:
        assert implementers & builtin, f"no built-in plugin implements {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_exercised_by_a_test_here(hook):
    assert callable(globals().get(f"test_hook_{hook}")), f"write test_hook_{hook} in {Path(__file__).name}"


def test_every_registry_kind_has_a_contract_or_is_a_diffusers_scheduler():
    assert set(hookspecs.KIND_HOOKS) - set(CONTRACTS) == {"sampler"}


# --- each hook, through the plugin manager ------------------------------------------------------------

def test_hook_register_models(registry):
    assert {"opensora_v1_3", "wan"} <= set(_built_in_names(registry, "model"))
    model = registry.build("model", "opensora_v1_3", {"preset": "tiny"}, meta=True)  # no weights, no memory
    check_contract(model, "model", "opensora_v1_3")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_hook_register_autoencoders(registry):
    assert {"pixel", "wfvae"} <= set(_built_in_names(registry, "autoencoder"))
    ae = check_contract(registry.build("autoencoder", "pixel", {}), "autoencoder", "pixel")
    video = torch.rand(1, 3, 1 + ae.temporal_stride, 2 * ae.spatial_stride, 2 * ae.spatial_stride) * 2 - 1
    latents = ae.encode(video)
    assert latents.shape[:3] == (1, ae.latent_channels, 2)
    assert torch.allclose(ae.decode(latents), video, atol=1e-5)


def test_hook_register_text_encoders(registry, tmp_path):
    assert {"t5", "tiny_t5"} <= set(_built_in_names(registry, "text_encoder"))
    encoder = registry.build("text_encoder", "tiny_t5", {"max_length": 8, "cache_dir": str(tmp_path)})
    check_contract(encoder, "text_encoder", "tiny_t5")
    tokens = encoder.tokenize(["a red square"])
    states = encoder.encode(tokens["input_ids"], tokens["attention_mask"])
    assert states.shape == (1, 8, encoder.hidden_size)


def test_hook_register_samplers(registry):
    assert {"DDIM", "EulerDiscrete"} <= set(_built_in_names(registry, "sampler"))
    scheduler = registry.build("sampler", "DDIM", {})
    scheduler.set_timesteps(4)
    sample = torch.zeros(1, 2, 1, 2, 2)
    assert scheduler.step(sample, scheduler.timesteps[0], sample).prev_sample.shape == sample.shape


def test_hook_register_refiners(registry):
    assert {"none", "template", "llm"} <= set(_built_in_names(registry, "refiner"))
    refiner = check_contract(registry.build("refiner", "template", {"template": "<{}>"}), "refiner", "template")
    assert refiner(["a cat"]) == ["<a cat>"]
    assert registry.build("refiner", "none", {})(["a cat"]) == ["a cat"]


def test_hook_register_strategies(registry, tmp_path):
    assert {"single", "ddp", "fsdp", "deepspeed"} <= set(_built_in_names(registry, "strategy"))
    checked = check_recipe(load_recipe(write_tiny_recipe(tmp_path, tmp_path / "out", tmp_path / "cache")), registry)
    strategy = build_strategy(checked.loaded.recipe, registry, world_size=1, device=torch.device("cpu"))
    assert strategy.name == "single"
    model = torch.nn.Linear(2, 1)
    strategy.prepare(model, optimizer_factory=lambda params: torch.optim.SGD(params, lr=0.1),
                     lr_scheduler_factory=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1))
    before = model.weight.detach().clone()
    with strategy.autocast():
        loss = strategy.model(torch.ones(1, 2)).sum()
    strategy.backward(loss)
    strategy.optimizer_step()
    assert not torch.equal(before, model.weight)


def test_hook_register_trackers(registry, tmp_path):
    assert _built_in_names(registry, "tracker") == ["tensorboard"]
    pytest.importorskip("tensorboard")
    tracker = registry.build("tracker", "tensorboard", {}, output_dir=tmp_path, start_step=0)
    check_contract(tracker, "tracker", "tensorboard")
    tracker.log_metrics(1, {"loss": 0.5, "lr": None})
    tracker.close()
    assert list((tmp_path / "logs" / "tensorboard").iterdir())


def test_hook_register_captioners(registry, tmp_path):
    assert _built_in_names(registry, "captioner") == ["vlm"]
    # the built-in needs a local vision-language model (tests/builtin/test_curation_plugins.py builds a tiny
    # one); here: its options are validated before any work, and a missing folder is named
    with pytest.raises(ConfigError, match="is not a local model folder"):
        registry.make_config("captioner", "vlm", {"model": str(tmp_path / "missing")}, where="captioner vlm")


def test_hook_register_scorers(registry, tmp_path):
    assert {"aesthetic", "motion", "tech"} <= set(_built_in_names(registry, "scorer"))
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "noise.png")
    scorer = check_contract(registry.build("scorer", "tech", {"frames": 1}), "scorer", "tech")
    score = scorer.score(clip_from_record(str(tmp_path), {"path": "noise.png"}))
    assert score is not None and score > 0
    assert registry.get("scorer", "tech").spec.metadata["field"] == "tech"


def test_hook_register_commands():
    class Plugin:
        @osctl.hookimpl
        def register_commands(self, app: Any) -> None:
            app.command("hello")(lambda: print("hello"))

    app = typer.Typer()
    new_plugin_manager(extra_plugins=[("tests.hello", Plugin())]).hook.register_commands(app=app)
    assert [command.name for command in app.registered_commands] == ["hello"]
