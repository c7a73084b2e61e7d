"""`osctl sample` end to end on a tiny trained checkpoint: files, sidecars, seeds, errors, processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from osctl.cli import app
from osctl.media.read import read_spread_frames, read_video_frames
from osctl.media.write import grid_layout
from osctl.plugin_manager import default_registry
from osctl.recipe.load import load_recipe
from osctl.recipe.validate import check_recipe
from osctl.train.run import TrainOptions, run_training
from osctl.utils.files import file_sha256
from tests.train_helpers import SyntheticClips, write_tiny_recipe

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny model trained for 6 steps; its checkpoint-6 folder."""
    tmp = tmp_path_factory.mktemp("trained")
    recipe = write_tiny_recipe(tmp, tmp / "out", tmp / "cache")
    registry = default_registry()
    checked = check_recipe(load_recipe(recipe), registry)
    text_encoder = registry.build("text_encoder", "tiny_t5", checked.components["text_encoder"])
    run_training(checked, registry, TrainOptions(data_source=SyntheticClips(text_encoder.tokenize)))
    return tmp / "out" / "checkpoint-6"


def sample(args: list[str]):
    return runner.invoke(app, ["sample", *args])


def test_sample_from_checkpoint_writes_videos_and_sidecars(checkpoint, tmp_path):
    out = tmp_path / "s"
    result = sample(["--checkpoint", str(checkpoint), "-p", "clip number 1", "-p", "clip number 2",
                     "--num-samples-per-prompt", "2", "-o", str(out), "--grid", "--seed", "5"])
    assert result.exit_code == 0, result.output
    videos = sorted(out.glob("0*.mp4"))
    assert [v.name for v in videos] == ["0000-00-clip-number-1.mp4", "0000-01-clip-number-1.mp4",
                                        "0001-00-clip-number-2.mp4", "0001-01-clip-number-2.mp4"]
    frames = read_video_frames(videos[0])
    assert frames.shape == (5, 16, 16, 3)
    sidecar = json.loads(videos[0].with_suffix(".json").read_text())
    for key in ("prompt", "refined_prompt", "negative_prompt", "seed", "sampler", "steps", "guidance_scale",
                "num_frames", "height", "width", "components", "osctl_version"):
        assert key in sidecar, key
    assert sidecar["sampler"] == "EulerAncestralDiscrete" and sidecar["steps"] == 3
    assert sidecar["source"]["weights"].endswith("model_ema")
    assert sidecar["file_sha256"] == file_sha256(videos[0])  # the mp4 itself (frames_sha256: before encoding)
    assert (out / "grid-EulerAncestralDiscrete-gs7.5-s3.mp4").is_file()


def test_image_grid_rows_are_prompts_and_progress_names_prompt_and_sample(checkpoint, tmp_path):
    out = tmp_path / "s"
    prompts = ["clip number 1", "clip number 2", "clip number 3"]
    result = sample(["--checkpoint", str(checkpoint), *(a for p in prompts for a in ("-p", p)), "--num-frames", "1",
                     "--num-samples-per-prompt", "2", "-o", str(out), "--grid", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "prompt 1/3 · sample 1/2  clip number 1" in result.stderr
    assert "prompt 3/3 · sample 2/2  clip number 3" in result.stderr
    files = [[out / f"{i:04d}-{k:02d}-clip-number-{i + 1}.png" for k in range(2)] for i in range(3)]
    for file in (f for row in files for f in row):
        sidecar = json.loads(file.with_suffix(".json").read_text())
        assert sidecar["file_sha256"] == file_sha256(file) and len(sidecar["frames_sha256"]) == 64
    rows = [(f"{i + 1}. {p}", [read_spread_frames(f)[0] for f in files[i]]) for i, p in enumerate(prompts)]
    layout = grid_layout(rows)
    grid = read_spread_frames(out / "grid-EulerAncestralDiscrete-gs7.5-s3.png")[0][0]
    assert grid.shape == (layout.height, layout.width, 3)
    for (_, row), top in zip(rows, layout.row_tops, strict=True):  # row i holds prompt i's samples in order
        for video, left in zip(row, layout.column_lefts, strict=True):
            enlarged = video[0].repeat(layout.factor, axis=0).repeat(layout.factor, axis=1)
            assert (grid[top : top + layout.cell[0], left : left + layout.cell[1]] == enlarged).all()


def test_same_seed_same_video_and_seeds_independent_of_order(checkpoint, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert sample(["--checkpoint", str(checkpoint), "-p", "clip number 3", "-o", str(a)]).exit_code == 0
    assert sample(["--checkpoint", str(checkpoint), "-p", "clip number 3", "-p", "other", "-o", str(b)]).exit_code == 0
    first = json.loads((a / "0000-00-clip-number-3.json").read_text())
    second = json.loads((b / "0000-00-clip-number-3.json").read_text())
    assert first["seed"] == second["seed"] and first["frames_sha256"] == second["frames_sha256"]


def test_batched_sampling_gives_each_seed_its_own_video(checkpoint, tmp_path):
    """--batch-size 3 over 2 prompts x 2 samples (batches [3, 1], crossing prompts) = one video at a time."""
    from safetensors.torch import load_file

    runs = {}
    for size in (1, 3):
        out = tmp_path / f"b{size}"
        result = sample(["--checkpoint", str(checkpoint), "-p", "clip number 1", "-p", "clip number 2",
                         "--num-samples-per-prompt", "2", "--batch-size", str(size), "-o", str(out),
                         "--set", "sample.save_latents=true"])
        assert result.exit_code == 0, result.output
        runs[size] = {f.name: f for f in sorted(out.glob("*.latents.safetensors"))}
    assert list(runs[1]) == list(runs[3]) and len(runs[1]) == 4
    for name, single in runs[1].items():
        alone, batched = load_file(single)["latents"], load_file(runs[3][name])["latents"]
        assert (alone - batched).abs().max() < 1e-4, name
    sidecars = [json.loads(f.read_text()) for f in sorted((tmp_path / "b3").glob("0*.json"))]
    assert [s["batch_size"] for s in sidecars] == [3, 3, 3, 1]
    assert len({s["seed"] for s in sidecars}) == 4


def test_template_refiner_and_jsonl_overrides_are_recorded(checkpoint, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a red circle", "seed": 11, "num_frames": 1}\n# skipped\n\n{"prompt": "a cat"}\n')
    out = tmp_path / "s"
    result = sample(["--checkpoint", str(checkpoint), "--prompts", str(prompts), "-o", str(out),
                     "--set", "refiner.name=template"])
    assert result.exit_code == 0, result.output
    image = json.loads((out / "0000-00-a-red-circle.json").read_text())
    assert image["seed"] == 11 and image["num_frames"] == 1 and image["refiner"] == "template"
    assert "high quality, high aesthetic, a red circle" in image["refined_prompt"]
    assert (out / "0000-00-a-red-circle.png").is_file()
    assert (out / "0001-00-a-cat.mp4").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--height", "18"], "sample.height: must be a multiple of 8 (autoencoder stride 4 x patch size 2), got 18; "
                             "use 16 or 24"),
        (["--model-path", "/nonexistent/model"], "/nonexistent/model"),
        (["--prompts", "EMPTY"], "has no prompts"),
    ],
)
def test_bad_inputs_exit_2_with_one_sentence(checkpoint, tmp_path, args, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    base = ["--checkpoint", str(checkpoint), "-o", str(tmp_path / "s")]
    if "--prompts" not in args:
        base += ["-p", "x"]
    result = sample(base + args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_no_prompt_is_a_usage_error(checkpoint, tmp_path):
    result = sample(["--checkpoint", str(checkpoint), "-o", str(tmp_path)])
    assert result.exit_code == 2 and "no prompts to sample" in result.output


@pytest.mark.slow
@pytest.mark.multiprocess
def test_three_prompts_over_two_processes_match_one_process(checkpoint, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--checkpoint", str(checkpoint), "-p", "clip number 1", "-p", "clip number 2", "-p", "clip number 3"]
    subprocess.run([sys.executable, "-m", "osctl", "sample", *common, "-o", str(one)], check=True, env=env,
                   capture_output=True, timeout=300)
    proc = subprocess.run([sys.executable, "-m", "osctl", "sample", *common, "-o", str(two), "--grid",
                           "--nproc-per-node", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in one.glob("0*.mp4"))
    assert names == sorted(p.name for p in two.glob("0*.mp4")) and len(names) == 3
    for name in names:  # the generated frames are identical (the H.264 bytes may differ with encoder threads)
        sidecar = name.replace(".mp4", ".json")
        assert json.loads((one / sidecar).read_text())["frames_sha256"] == \
            json.loads((two / sidecar).read_text())["frames_sha256"], name
    assert (two / "grid-EulerAncestralDiscrete-gs7.5-s3.mp4").is_file()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sequence_parallel_sampling_equals_one_process(checkpoint, tmp_path):
    from safetensors.torch import load_file

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--checkpoint", str(checkpoint), "-p", "clip number 1", "--set", "sample.save_latents=true"]
    subprocess.run([sys.executable, "-m", "osctl", "sample", *common, "-o", str(one)], check=True, env=env,
                   capture_output=True, timeout=300)
    proc = subprocess.run([sys.executable, "-m", "osctl", "sample", *common, "-o", str(two), "--sp",
                           "--nproc-per-node", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = "0000-00-clip-number-1.latents.safetensors"
    single, parallel = load_file(one / name)["latents"], load_file(two / name)["latents"]
    assert (single - parallel).abs().max().item() < 1e-4
    sidecar = json.loads((two / "0000-00-clip-number-1.json").read_text())
    assert sidecar["sequence_parallel"] is True and sidecar["world_size"] == 2
    assert not list(two.glob("*.tmp*"))


def test_cpu_offload_gives_the_same_frames(checkpoint, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert sample(["--checkpoint", str(checkpoint), "-p", "clip number 4", "-o", str(a)]).exit_code == 0
    result = sample(["--checkpoint", str(checkpoint), "-p", "clip number 4", "-o", str(b), "--cpu-offload"])
    assert result.exit_code == 0, result.output
    first = json.loads((a / "0000-00-clip-number-4.json").read_text())
    second = json.loads((b / "0000-00-clip-number-4.json").read_text())
    assert first["frames_sha256"] == second["frames_sha256"]


def test_llm_caption_refiner_is_run_and_recorded(checkpoint, tmp_path):
    from osctl_builtin.refiners.llm import build_tiny_causal_lm

    lm = build_tiny_causal_lm(tmp_path / "refiner", seed=0)
    out = tmp_path / "s"
    result = sample(["--checkpoint", str(checkpoint), "-p", "a cat", "-o", str(out), "--caption-refiner", str(lm),
                     "--set", "refiner.max_new_tokens=8"])
    assert result.exit_code == 0, result.output
    sidecar = json.loads(next(out.glob("*.json")).read_text())
    assert sidecar["refiner"] == "llm" and sidecar["prompt"] == "a cat"
    assert isinstance(sidecar["refined_prompt"], str) and sidecar["encoded_prompt"] == sidecar["refined_prompt"]


def test_compiled_sampling_with_a_forced_attention_kernel_gives_the_eager_latents(checkpoint, tmp_path):
    """``sample.compile`` (each block through torch.compile) and ``sample.attention_backend: math`` change how the
    step is computed, not what it computes: the final latents equal the eager, auto-kernel run's (<= 1e-4)."""
    from safetensors.torch import load_file

    from osctl.train.compile import CompileWatch

    latents = {}
    watch = CompileWatch().start()
    for name, sets in (("eager", []), ("compiled", ["sample.compile=true", "sample.attention_backend=math"])):
        out = tmp_path / name
        args = ["--checkpoint", str(checkpoint), "-p", "clip number 1", "-o", str(out), "--seed", "5",
                "--set", "sample.save_latents=true"]
        result = sample([*args, *(item for s in sets for item in ("--set", s))])
        assert result.exit_code == 0, result.output
        (file,) = out.glob("*.latents.safetensors")
        latents[name] = next(iter(load_file(str(file)).values()))
        assert (watch.compiles > 0) is (name == "compiled")  # the blocks went through torch.compile
    watch.stop()
    torch.testing.assert_close(latents["compiled"], latents["eager"], atol=1e-4, rtol=1e-4)
