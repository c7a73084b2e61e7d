"""The contracts in osctl.protocols are what the core checks components against as it builds them."""

from __future__ import annotations

import pytest

import osctl
from osctl.build import build_refiner
from osctl.errors import ConfigError
from osctl.hookspecs import KIND_HOOKS
from osctl.plugin_manager import build_registry, default_plugin_manager
from osctl.protocols import CONTRACTS, check_contract, contract_members
from osctl.recipe.load import load_recipe
from osctl.recipe.validate import check_recipe
from osctl.registry import Provider
from osctl.testing import write_tiny_recipe

FAKES = Provider("tests.fakes", "tests-fakes", "0")


class NoDecode:
    """An autoencoder that forgot ``decode``."""

    def encode(self, video, *, sample=True, generator=None):
        return video


def test_every_contract_belongs_to_a_registry_kind_and_lists_its_members():
    assert set(CONTRACTS) <= set(KIND_HOOKS)
    assert contract_members(CONTRACTS["autoencoder"]) == ["decode", "encode"]  # strides: the config's geometry
    assert contract_members(CONTRACTS["refiner"]) == ["__call__"]


def test_check_contract_names_what_is_missing():
    assert check_contract(str.upper, "refiner", "fine") is str.upper
    with pytest.raises(ConfigError, match=r"the autoencoder 'half' built a NoDecode without decode, which "
                                          r"osctl\.protocols\.Autoencoder requires"):
        check_contract(NoDecode(), "autoencoder", "half")
    assert check_contract(object(), "sampler", "any") is not None  # kinds without a contract are not checked


def test_strategy_attributes_set_by_prepare_are_not_required_at_build():
    class Unprepared:
        name = "mine"

        def __getattr__(self, item):  # every method, none of model/module/optimizer/lr_scheduler
            if item in ("model", "module", "optimizer", "lr_scheduler"):
                raise AttributeError(item)
            return lambda *a, **k: None

    assert isinstance(check_contract(Unprepared(), "strategy", "mine"), Unprepared)


def test_the_builders_refuse_a_component_that_breaks_its_contract(tmp_path):
    registry = build_registry(default_plugin_manager())
    registry.add("refiner", osctl.ComponentSpec(name="not_callable", summary="returns a string",
                                                factory=lambda config, **_: "refine me"), FAKES)
    recipe = write_tiny_recipe(tmp_path, tmp_path / "out", tmp_path / "cache")
    checked = check_recipe(load_recipe(recipe, ["refiner.name=not_callable"]), registry)
    with pytest.raises(ConfigError, match=r"the refiner 'not_callable' built a str without __call__, which "
                                          r"osctl\.protocols\.Refiner requires; fix the plugin"):
        build_refiner(checked, registry)
