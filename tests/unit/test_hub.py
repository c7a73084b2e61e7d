"""osctl.hub: offline unless asked, the hub cache's location, cached snapshots, and the missing-weights sentences."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import osctl
from osctl.availability import component_missing_weights, require_weights
from osctl.cli import app
from osctl.hub import (
    apply_network_policy,
    cached_snapshot,
    hub_cache_dir,
    missing_from_cache,
    repo_cache_folder,
)
from osctl.plugin_manager import default_registry

OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@pytest.fixture
def fresh_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*OFFLINE, "OSCTL_ONLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_osctl_goes_offline_unless_asked(fresh_env, monkeypatch):
    assert apply_network_policy() is True
    assert all(os.environ[name] == "1" for name in OFFLINE)
    constants = sys.modules.get("huggingface_hub.constants")
    assert constants is None or constants.HF_HUB_OFFLINE is True  # already imported: its constant follows


def test_online_by_flag_or_variable_leaves_the_hub_reachable(fresh_env, monkeypatch):
    assert apply_network_policy(online_flag=True) is False
    assert not any(name in os.environ for name in OFFLINE)
    monkeypatch.setenv("OSCTL_ONLINE", "1")
    assert apply_network_policy() is False and "HF_HUB_OFFLINE" not in os.environ


def test_a_users_offline_setting_wins_over_online(fresh_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert apply_network_policy(online_flag=True) is True


def test_the_root_online_option(fresh_env, monkeypatch, tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["--online", "plugins", "list", "--json"]).exit_code == 0
    assert "HF_HUB_OFFLINE" not in os.environ
    assert runner.invoke(app, ["plugins", "list", "--json"]).exit_code == 0
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_hub_cache_location_follows_huggingface_hub(fresh_env, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub_cache_dir() == tmp_path / "cache"
    assert hub_cache_dir(tmp_path / "mine") == tmp_path / "mine"
    assert repo_cache_folder("google/mt5-xxl") == tmp_path / "cache" / "models--google--mt5-xxl"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"


def test_cached_snapshot_follows_refs_main(tmp_path):
    folder = repo_cache_folder("org/model", tmp_path)
    assert cached_snapshot("org/model", tmp_path) is None
    for name in ("old", "new"):
        (folder / "snapshots" / name).mkdir(parents=True)
        (folder / "snapshots" / name / "config.json").write_text("{}")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("old\n")
    assert cached_snapshot("org/model", tmp_path) == folder / "snapshots" / "old"


def test_missing_sentences_name_the_place_and_the_command(tmp_path):
    item = missing_from_cache("text_encoder.name_or_path", "google/mt5-xxl", tmp_path)
    text = item.describe()
    assert str(tmp_path / "models--google--mt5-xxl") in text and "`hf download google/mt5-xxl --cache-dir" in text
    with pytest.raises(osctl.ConfigError, match=r"^sampling needs weights .*models--google--mt5-xxl.*\.$") as caught:
        require_weights([item], what="sampling")
    assert caught.value.exit_code == 2
    require_weights([], what="sampling")  # nothing missing: nothing raised


def test_offline_an_uncached_hub_id_fails_at_once_naming_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(osctl.ConfigError, match=r"not available offline.*models--google--umt5-xxl.*hf download"):
        default_registry().build("text_encoder", "t5", {"name_or_path": "google/umt5-xxl"})


def test_components_report_what_is_missing(tmp_path):
    registry = default_registry()
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text('{"_class_name": "WFVAEModel"}')
    components = {
        "autoencoder": registry.make_config("autoencoder", "wfvae", {"path": str(vae)}, where="autoencoder"),
        "model": registry.make_config("model", "opensora_v1_3", {"preset": "tiny"}, where="model"),
        "text_encoder": registry.make_config("text_encoder", "tiny_t5", {}, where="text_encoder"),
    }
    missing = component_missing_weights(components)
    assert [m.key for m in missing] == ["autoencoder.path"] and "holds no weights" in missing[0].detail
    (vae / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert component_missing_weights(components) == []
    model = registry.make_config("model", "opensora_v1_3", {"path": str(tmp_path / "nowhere")}, where="model")
    assert [m.expected for m in component_missing_weights({"model": model})] == [str(tmp_path / "nowhere")]
    assert model.plan_architecture()["num_layers"] == 32  # planned as the released 2B/122 until it is there
    assert Path(tmp_path / "nowhere").exists() is False
