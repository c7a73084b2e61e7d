"""Plans without weights or network (osctl issue 28 and issue 21 items 11 and 15).

With the network unreachable and an empty Hugging Face cache, every recipe in ``recipes/`` dry-runs to
a full plan — components on the meta device, data bucketed in memory — opening no socket and writing
no file; training and sampling without the weights exit 2 naming what is missing and where, before
the model or the data index is built.

The data set is annotation-only: a plan never decodes media, and the shipped recipes want clips of
93 frames at 16 fps (about 6 s) that ``osctl data synth shapes`` (1-2 s clips) does not make.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from osctl.cli import app
from tests.conftest import REPO_ROOT

RECIPES = sorted((REPO_ROOT / "recipes").glob("*.yaml"))
MT5_CACHE = "models--google--mt5-xxl"
#: the text encoder each family's released pipelines carry, as a plan counts it
FAMILY_TEXT_ENCODERS = {"wan": "5.68 B parameters",        # UMT5-XXL's encoder
                        "cogvideox": "4.76 B parameters",  # T5 v1.1 XXL's encoder
                        "ltx_video": "4.76 B parameters",
                        "hunyuan_video": "7.63 B parameters"}  # LLaVA-Llama-3's and CLIP-L's encoders
runner = CliRunner()


def write_long_clips(folder: Path, count: int = 160) -> Path:
    """data.txt over ``count`` 10-s clips in four sizes (16:9 twice, 4:3, 1:1): annotations only, no media."""
    (folder / "annotations").mkdir(parents=True)
    sizes = [(720, 1280), (1080, 1920), (480, 640), (512, 512)]
    records = [{"path": f"clip{i:04d}.mp4", "cap": f"a test clip number {i}",
                "resolution": {"height": sizes[i % 4][0], "width": sizes[i % 4][1]},
                "num_frames": 300, "fps": 30, "aesthetic": 6.0} for i in range(count)]
    (folder / "annotations" / "clips.json").write_text(json.dumps(records))
    (folder / "data.txt").write_text("media,annotations/clips.json\n")
    return folder / "data.txt"


@pytest.fixture(scope="module")
def data_txt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small data set that every shipped recipe keeps samples of."""
    return write_long_clips(tmp_path_factory.mktemp("long_clips"))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every attempt to resolve a host name or open an internet socket is recorded and refused.

    The list is checked after the command: a library that catches the refusal and retries (as the hub
    client does) is caught too. Unix sockets stay allowed (local inter-process pipes).
    """
    attempts: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refused(what: str, *args: object) -> OSError:
        attempts.append(f"{what}{args!r}")
        return OSError(f"network access refused by the test: {what}{args!r}")

    def connect(self: socket.socket, address: object) -> None:
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect(self, address)
        raise refused("connect", address)

    def connect_ex(self: socket.socket, address: object) -> int:
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect_ex(self, address)
        raise refused("connect_ex", address)

    def create_connection(address: object, *args: object, **kwargs: object) -> socket.socket:
        raise refused("create_connection", address)

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> list[object]:
        raise refused("getaddrinfo", host)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts


@pytest.fixture
def user_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A new user's machine: no offline variables set (osctl must go offline itself), empty caches, a
    private HOME and working folder. Returns the working folder."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "OSCTL_ONLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # imported by an earlier test with the session's offline setting
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HOME", "XDG_CACHE_HOME"):
        (tmp_path / name.lower()).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, bool]]:
    """(kind, name, meta) of every component built; building a real model or the data stream fails the test
    at once (the 2.77 B default model would take a minute and 11 GB)."""
    from osctl.registry import Registry

    calls: list[tuple[str, str, bool]] = []
    real_build = Registry.build

    def build(self: Registry, kind: str, name: str, config: object = None, **runtime: object) -> object:
        calls.append((kind, name, bool(runtime.get("meta"))))
        if kind == "model" and not runtime.get("meta"):
            raise AssertionError(f"the model {name!r} was built before the weights were checked")
        return real_build(self, kind, name, config, **runtime)

    def no_stream(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data stream (sample index) was built before the weights were checked")

    monkeypatch.setattr(Registry, "build", build)
    monkeypatch.setattr("osctl.data.stream.loader.build_batch_source", no_stream)
    return calls


def file_tree(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``roots`` with its size and modification time."""
    found = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            stat = path.stat()
            found[str(path)] = (stat.st_size if path.is_file() else -1, stat.st_mtime_ns)
    return found


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_recipe_plans_offline_and_writes_nothing(recipe, data_txt, user_machine, no_network, built,
                                                       monkeypatch):
    from osctl.recipe.load import load_recipe
    from tests.family_helpers import ensure_family_plugins

    ensure_family_plugins(monkeypatch, user_machine.parent / "site")  # until osctl is reinstalled with their entry points
    loaded = load_recipe(recipe).recipe
    model = loaded.model.name
    roots = (user_machine.parent, data_txt.parent)
    before = file_tree(*roots)
    started = time.perf_counter()
    result = runner.invoke(app, ["train", "--recipe", str(recipe), "--dry-run", "--json",
                                 "--set", f"data.data={data_txt}"])
    seconds = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    print(f"{recipe.name}: plan in {seconds:.1f} s")
    assert no_network == []
    assert file_tree(*roots) == before  # no index, no output_dir, no plan.json, no cache folder
    assert plan["model"].startswith(f"{model}: ") and "parameters" in plan["model"]
    assert "dry run: not written" in plan["data index"] and plan["steps per epoch"]
    assert "GB per process" in plan["memory with frozen components"]
    assert {kind for kind, _, meta in built if not meta} <= {"sampler"}  # every component on the meta device
    if loaded.pipeline_path is not None:  # a released family pipeline by hub id: planned from its released configs
        pipeline = loaded.pipeline_path
        encoder = FAMILY_TEXT_ENCODERS[model]
        assert plan["text encoder"].startswith(f"{loaded.text_encoder.name}: {encoder}")
        assert plan["autoencoder"].startswith(f"{loaded.autoencoder.name}: ")
        for key in ("model.path", "autoencoder.path", "text_encoder.name_or_path"):
            missing = plan[f"missing weights {key}"]
            assert f"`hf download {pipeline}`" in missing and f"models--{pipeline.replace('/', '--')}" in missing
        assert plan["weights"].startswith("3 missing")
    elif plan["text encoder"].startswith("t5"):  # the shipped v1.3 recipes name the released mT5-XXL and WF-VAE
        assert plan["text encoder"].startswith("t5: 5.66 B parameters")
        assert plan["autoencoder"].startswith("wfvae: 0.15 B parameters")
        missing = plan["missing weights text_encoder.name_or_path"]
        cache = Path(os.environ["HF_HOME"]) / "hub" / MT5_CACHE
        assert str(cache) in missing and "`hf download google/mt5-xxl`" in missing
        assert "ckpt/Open-Sora-Plan-v1.3.0/vae" in plan["missing weights autoencoder.path"]
        assert "missing" in plan["weights"]
    else:
        assert plan["weights"] == "all on this machine"


def test_the_2b_plan_counts_the_released_model(data_txt, user_machine, no_network):
    result = runner.invoke(app, ["train", "--recipe", str(REPO_ROOT / "recipes" / "sample-v1.3.yaml"), "--dry-run",
                                 "--json", "--set", f"data.data={data_txt}", "--set", "train.max_steps=10"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    # model.path is not downloaded: the plan builds the released 2B/122 configuration and says where it goes
    assert plan["model"].startswith("opensora_v1_3: 2771.98 M parameters")
    assert "ckpt/Open-Sora-Plan-v1.3.0/any93x640x640" in plan["missing weights model.path"]
    assert plan["steps"] == "0 -> 10" and no_network == []
    assert plan["latent geometry"] == ("autoencoder 4x8x8 (8 latent channels), patch 1x2x2: 4k+1 frames, sizes in "
                                       "multiples of 16")  # WF-VAE under the released model, from their configs


def test_a_dry_run_reads_a_fresh_index_and_only_plans_a_rebuild_of_a_stale_one(data_txt, user_machine, no_network):
    recipe = str(REPO_ROOT / "recipes" / "480p.yaml")
    built = runner.invoke(app, ["data", "bucket", str(data_txt), "--recipe", recipe, "--out", "out/index", "--json"])
    assert built.exit_code == 0, built.output
    before = file_tree(user_machine, data_txt.parent)
    fresh = runner.invoke(app, ["train", "--recipe", recipe, "--dry-run", "--json", "--set", f"data.data={data_txt}"])
    assert fresh.exit_code == 0, fresh.output
    assert json.loads(fresh.stdout)["data index"].startswith("out/index (up to date)")
    stale = runner.invoke(app, ["train", "--recipe", recipe, "--dry-run", "--json", "--set", f"data.data={data_txt}",
                                "--set", "data.train_fps=12"])
    assert stale.exit_code == 0, stale.output
    note = json.loads(stale.stdout)["data index"]
    assert "would be rebuilt" in note and "train_fps" in note and "dry run: not written" in note
    assert file_tree(user_machine, data_txt.parent) == before and no_network == []


def test_a_cached_text_encoder_is_found_and_planned_from_its_cached_config(data_txt, user_machine, no_network,
                                                                           golden):
    snapshot = Path(os.environ["HF_HOME"]) / "hub" / MT5_CACHE / "snapshots" / "0123abc"
    shutil.copytree(golden / "pipeline" / "mt5_tiny", snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0123abc")
    result = runner.invoke(app, ["train", "--recipe", str(REPO_ROOT / "recipes" / "480p.yaml"), "--dry-run", "--json",
                                 "--set", f"data.data={data_txt}"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert "missing weights text_encoder.name_or_path" not in plan
    assert plan["text encoder"].startswith("t5: ") and " M parameters" in plan["text encoder"]  # the tiny one
    assert no_network == []


def test_train_without_weights_exits_2_naming_them_before_building_anything(data_txt, user_machine, no_network,
                                                                             built):
    roots = (user_machine.parent, data_txt.parent)
    before = file_tree(*roots)
    started = time.perf_counter()
    result = runner.invoke(app, ["train", "--recipe", str(REPO_ROOT / "recipes" / "480p.yaml"),
                                 "--set", f"data.data={data_txt}", "--set", "train.max_steps=1"])
    print(f"refused in {time.perf_counter() - started:.1f} s")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "training needs weights that are not on this machine" in text
    assert "ckpt/Open-Sora-Plan-v1.3.0/vae" in text and MT5_CACHE in text and "hf download google/mt5-xxl" in text
    assert built == [] and no_network == []
    assert file_tree(*roots) == before  # no sample index, no output folder


@pytest.mark.parametrize("args, named", [
    ([], ["autoencoder.path: not set", MT5_CACHE, "hf download google/mt5-xxl"]),
    (["--recipe", str(REPO_ROOT / "recipes" / "sample-v1.3.yaml")],
     ["ckpt/Open-Sora-Plan-v1.3.0/any93x640x640", "ckpt/Open-Sora-Plan-v1.3.0/vae", MT5_CACHE]),
], ids=["defaults", "sample-v1.3"])
def test_sample_without_weights_exits_2_before_building_the_model(args, named, user_machine, no_network, built):
    started = time.perf_counter()
    result = runner.invoke(app, ["sample", *args, "--prompt", "x", "--output-dir", str(user_machine / "samples")])
    print(f"refused in {time.perf_counter() - started:.1f} s")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "sampling needs weights that are not on this machine" in text
    for piece in named:
        assert piece in text
    assert built == [] and no_network == []
    assert not (user_machine / "samples").exists()


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_show_needs_no_network(recipe, user_machine, no_network):
    result = runner.invoke(app, ["recipe", "show", str(recipe), "--json"])
    assert result.exit_code == 0, result.output
    assert no_network == []


def test_data_bucket_needs_no_network(data_txt, user_machine, no_network):
    result = runner.invoke(app, ["data", "bucket", str(data_txt), "--recipe", str(REPO_ROOT / "recipes" / "480p.yaml"),
                                 "--out", str(user_machine / "index"), "--json"])
    assert result.exit_code == 0, result.output
    assert no_network == []


SITECUSTOMIZE = """
import socket, sys

def _refuse(*args, **kwargs):
    sys.stderr.write("NETWORK ACCESS " + repr(args[:2]) + "\\n")
    raise OSError("network access refused by the test")

_connect = socket.socket.connect

def _connect_local(self, address):
    if self.family == getattr(socket, "AF_UNIX", None):
        return _connect(self, address)
    _refuse(address)

socket.socket.connect = _connect_local
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""


def test_a_new_user_plans_in_a_real_process_with_no_network(data_txt, tmp_path):
    """The issue's scenario end to end: no HF_HUB_OFFLINE set, no cache, no network; the process goes
    offline by itself, prints the plan and touches no socket."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "OSCTL_ONLINE")}
    env.update(HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(REPO_ROOT), str(REPO_ROOT / "plugins"),
                                           env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "osctl", "train", "--recipe", str(REPO_ROOT / "recipes" / "480p.yaml"),
                             "--dry-run", "--set", f"data.data={data_txt}"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    print(f"plan in {time.perf_counter() - started:.1f} s (process start and imports included)")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training plan" in result.stdout and MT5_CACHE in result.stdout
    assert "NETWORK ACCESS" not in result.stderr and "Retrying" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # not even HOME or a cache folder appeared
