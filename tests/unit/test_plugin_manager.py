"""Entry-point discovery: built-ins and third-party plugins load the same way; duplicates are errors."""

from __future__ import annotations

import pytest

from osctl.errors import PluginError
from osctl.plugin_manager import build_registry, find_plugins, new_plugin_manager, select_plugins
from tests.plugin_helpers import FIXTURES, install_fake_distribution


def test_builtins_come_through_entry_points():
    plugins = {p.name: p for p in find_plugins()}
    assert plugins["osctl.samplers.diffusers"].distribution == "osctl"
    assert plugins["osctl.samplers.diffusers"].builtin
    registry = build_registry(new_plugin_manager())
    assert registry.get("sampler", "DDIM").provider.distribution == "osctl"


def test_out_of_tree_plugin_is_found_loaded_and_registered(hello_plugin):
    registry = build_registry(new_plugin_manager())
    shout = registry.get("refiner", "shout")
    assert shout.provider.distribution == "osctl-hello"
    refine = registry.build("refiner", "shout", {"exclaim": 2})
    assert refine(["a cat"]) == ["A CAT!!"]


def test_duplicate_entry_point_name_is_reported(monkeypatch, tmp_path):
    install_fake_distribution(monkeypatch, tmp_path / "one", "dup-one", {"osctl_dup": "osctl_dup_one"})
    install_fake_distribution(monkeypatch, tmp_path / "two", "dup-two", {"osctl_dup": "osctl_dup_two"})
    with pytest.raises(PluginError) as err:
        find_plugins()
    assert "dup-one" in err.value.message and "dup-two" in err.value.message
    assert "declared twice" in err.value.message


def test_duplicate_component_across_distributions_names_both(monkeypatch, tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "osctl_ddim_clone.py").write_text(
        "import osctl\n"
        "@osctl.hookimpl\n"
        "def register_samplers(register):\n"
        "    register(osctl.ComponentSpec(name='DDIM', summary='clone', factory=lambda c, **r: None))\n"
    )
    install_fake_distribution(monkeypatch, tmp_path / "site", "ddim-clone", {"ddim_clone": "osctl_ddim_clone"})
    with pytest.raises(PluginError) as err:
        build_registry(new_plugin_manager())
    assert "sampler 'DDIM' is registered twice" in err.value.message
    assert "osctl 0.1.0" in err.value.message and "ddim-clone" in err.value.message


def test_disable_and_load_filters(monkeypatch, hello_plugin):
    found = find_plugins()
    monkeypatch.setenv("OSCTL_LOAD_PLUGINS", "")
    names = {p.name for p in select_plugins(found)}
    assert "osctl_hello" not in names and "osctl.samplers.diffusers" in names
    monkeypatch.setenv("OSCTL_LOAD_PLUGINS", "osctl-hello")
    assert "osctl_hello" in {p.name for p in select_plugins(found)}
    monkeypatch.delenv("OSCTL_LOAD_PLUGINS")
    monkeypatch.setenv("OSCTL_DISABLE_PLUGINS", "osctl.samplers.diffusers")
    names = {p.name for p in select_plugins(found)}
    assert "osctl.samplers.diffusers" not in names and "osctl_hello" in names


def test_broken_plugin_import_is_wrapped(monkeypatch, tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "osctl_broken.py").write_text("raise RuntimeError('boom')\n")
    install_fake_distribution(monkeypatch, tmp_path / "site", "broken", {"broken": "osctl_broken"})
    with pytest.raises(PluginError, match=r'failed to load plugin "broken\[broken\]": RuntimeError: boom'):
        new_plugin_manager()


def test_misspelled_hook_fails_at_startup(monkeypatch, tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "osctl_typo.py").write_text(
        "import osctl\n@osctl.hookimpl\ndef register_sampler(register):\n    pass\n"
    )
    install_fake_distribution(monkeypatch, tmp_path / "site", "typo", {"typo": "osctl_typo"})
    with pytest.raises(PluginError, match="does not define"):
        new_plugin_manager()


def test_fixture_module_exists():
    assert (FIXTURES / "osctl_hello" / "osctl_hello.py").is_file()


def test_default_registry_reads_the_installed_metadata_once(monkeypatch):
    import importlib.metadata as md

    import osctl.plugin_manager as manager

    calls = []
    real = md.distributions

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(md, "distributions", counting)
    manager.reset_caches()
    try:
        registry = manager.default_registry()
        assert registry.get("sampler", "DDIM").provider.distribution == "osctl"
        assert len(calls) == 1
    finally:
        manager.reset_caches()
