"""`osctl plugins list` and the root command line: exit codes, JSON shape, third-party plugins."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from osctl import __version__
from osctl.cli import app
from osctl.plugin_manager import new_plugin_manager

runner = CliRunner()

TWELVE = {
    "DDIM", "EulerDiscrete", "DDPM", "DPMSolverMultistep", "DPMSolverSinglestep", "PNDM", "HeunDiscrete",
    "EulerAncestralDiscrete", "DEISMultistep", "KDPM2AncestralDiscrete", "CogVideoX", "FlowMatchEulerDiscrete",
}


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"osctl {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for group in ("plugins", "recipe"):
        assert group in result.stdout


def test_plugins_list_json_has_the_twelve_samplers_with_provider():
    result = runner.invoke(app, ["plugins", "list", "--kind", "sampler", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    samplers = {c["name"]: c for c in payload["components"]}
    # the reference's twelve, Wan's flow UniPC and CogVideoX 5B's DPM-Solver
    assert set(samplers) == TWELVE | {"UniPCMultistep", "CogVideoXDPM"}
    assert all(c["kind"] == "sampler" and c["distribution"] == "osctl" for c in samplers.values())
    assert samplers["DDIM"]["plugin"] == "osctl.samplers.diffusers"
    plugins = {p["name"]: p for p in payload["plugins"]}
    assert "register_samplers" in plugins["osctl.samplers.diffusers"]["hooks"]


def test_plugins_list_table_and_unknown_kind():
    result = runner.invoke(app, ["plugins", "list"])
    assert result.exit_code == 0
    assert "EulerAncestralDiscrete" in result.stdout and "[diffusers EulerAncestralDiscreteScheduler]" in result.stdout
    result = runner.invoke(app, ["plugins", "list", "--kind", "samplers"])
    assert result.exit_code == 2
    assert "unknown kind 'samplers'" in result.output
    assert "Traceback" not in result.output


def test_out_of_tree_plugin_is_listed(hello_plugin):
    result = runner.invoke(app, ["plugins", "list", "--kind", "refiner", "--json"])
    assert result.exit_code == 0, result.output
    shout = [c for c in json.loads(result.stdout)["components"] if c["name"] == "shout"]
    assert shout and shout[0]["distribution"] == "osctl-hello" and shout[0]["version"] == "0.1"


def test_register_commands_hook_adds_a_command(hello_plugin):
    fresh = typer.Typer()

    @fresh.callback()
    def _root() -> None:
        """root"""

    new_plugin_manager().hook.register_commands(app=fresh)
    result = runner.invoke(fresh, ["hello", "world"])
    assert result.exit_code == 0 and "hello from osctl_hello" in result.stdout
