"""`--engine ray` on a local Ray instance writes byte-identical outputs to the local engine.

One Ray instance (2 CPUs) serves the whole module: starting Ray costs seconds. Skipped only when
Ray is not installed (the optional `ray` extra; CI installs it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from osctl.curate.apply import score_data
from osctl.curate.engines import LocalEngine, RayEngine, _python_path
from osctl.curate.importer import import_media
from osctl.curate.scenes import split_scenes
from tests.curate_helpers import ensure_curation_plugins, moving_square, shapes_folder, three_scene_clip

ray = pytest.importorskip("ray", reason='Ray is not installed: the optional extra (pip install "osctl[ray]") is '
                                        "needed for --engine ray; CI installs it")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_instance() -> Any:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": _python_path()}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root, _ = shapes_folder(tmp_path_factory.mktemp("ray"), videos=5, images=2)
    three_scene_clip(root / "videos" / "three.mp4", (16, 16, 16))
    moving_square(root / "videos" / "square.mp4", speed=2)
    (root / "videos" / "junk.mp4").write_text("not a video")
    return root


def _outputs(result: Any) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in result.annotations}
    files["data.txt"] = result.data_txt.read_bytes()
    files["problems.jsonl"] = (result.out / "problems.jsonl").read_bytes()
    return files


def test_ray_engine_gives_the_local_engine_outputs(ray_instance: Any, folder: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_curation_plugins(monkeypatch, tmp_path / "site")
    engine = RayEngine(workers=2)
    assert engine.workers == 2
    local = import_media(folder, tmp_path / "local", engine=LocalEngine(2))
    remote = import_media(folder, tmp_path / "ray", engine=engine)
    assert remote.engine == "ray" and (remote.files, remote.written, remote.probed) == (10, 9, 10)
    assert _outputs(remote) == _outputs(local)

    local_scenes = split_scenes(local.data_txt, tmp_path / "local-s", engine=LocalEngine(2))
    remote_scenes = split_scenes(local.data_txt, tmp_path / "ray-s", engine=engine)
    assert remote_scenes.written == 11 and _outputs(remote_scenes) == _outputs(local_scenes)

    local_scores = score_data(local_scenes.data_txt, tmp_path / "local-m", scorers=["motion", "tech"],
                              engine=LocalEngine(2))
    remote_scores = score_data(local_scenes.data_txt, tmp_path / "ray-m", scorers=["motion", "tech"], engine=engine)
    assert remote_scores.worked == 11 and remote_scores.problems == []
    assert _outputs(remote_scores) == _outputs(local_scores)
    engine.close()
    assert ray.is_initialized()  # a Ray instance the engine joined is left running
