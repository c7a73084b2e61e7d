"""The registry: duplicates, unknown names, aliases, config validation."""

from __future__ import annotations

import pytest

import osctl
from osctl.errors import ConfigError, PluginError
from osctl.registry import ComponentConfig, Provider, Registry

A = Provider("plugin.a", "dist-a", "1.0")
B = Provider("plugin.b", "dist-b", "2.0")


class SizeConfig(ComponentConfig):
    size: int = 3


def spec(name: str, **kw) -> osctl.ComponentSpec:
    return osctl.ComponentSpec(name=name, summary=f"{name} thing", factory=lambda c, **r: (c, r), **kw)


def test_duplicate_name_names_both_providers():
    reg = Registry(["sampler"])
    reg.add("sampler", spec("DDIM"), A)
    with pytest.raises(PluginError) as err:
        reg.add("sampler", spec("DDIM"), B)
    assert "dist-a" in err.value.message and "dist-b" in err.value.message
    assert "registered twice" in err.value.message


def test_alias_colliding_with_name_is_a_duplicate():
    reg = Registry(["model"])
    reg.add("model", spec("big"), A)
    with pytest.raises(PluginError, match="registered twice"):
        reg.add("model", spec("other", aliases=("big",)), B)


def test_unknown_name_lists_available_and_closest():
    reg = Registry(["sampler"])
    for name in ("DDIM", "EulerDiscrete", "EulerAncestralDiscrete"):
        reg.add("sampler", spec(name), A)
    with pytest.raises(PluginError) as err:
        reg.get("sampler", "EulerAncestral")
    msg = err.value.message
    assert "available: DDIM, EulerAncestralDiscrete, EulerDiscrete" in msg
    assert "Did you mean 'EulerAncestralDiscrete'?" in msg
    with pytest.raises(PluginError, match="Did you mean 'DDIM'"):
        reg.get("sampler", "ddim")


def test_alias_lookup_and_build_passes_config_and_runtime():
    reg = Registry(["model"])
    reg.add("model", spec("opensora", aliases=("OSP",), config=SizeConfig), A)
    assert reg.get("model", "OSP").name == "opensora"
    config, runtime = reg.build("model", "OSP", {"size": 5}, device="cpu")
    assert config.size == 5 and runtime == {"device": "cpu"}


def test_config_errors_name_the_key_and_suggest():
    reg = Registry(["model"])
    reg.add("model", spec("m", config=SizeConfig), A)
    with pytest.raises(ConfigError) as err:
        reg.make_config("model", "m", {"sise": 4}, where="model")
    assert err.value.message == "model.sise: unknown key; did you mean 'size'?"
    with pytest.raises(ConfigError, match=r"model.size: Input should be a valid integer.*'big'"):
        reg.make_config("model", "m", {"size": "big"}, where="model")


def test_registering_something_else_than_a_spec_is_refused():
    reg = Registry(["model"])
    with pytest.raises(PluginError, match=r"pass an osctl\.ComponentSpec"):
        reg.add("model", {"name": "x"}, A)  # type: ignore[arg-type]
