"""The shapes dataset generator: files, annotations, determinism, decodability, hold-out, reuse."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import av
import decord
import numpy as np
import orjson
import pytest
from PIL import Image

from osctl.errors import UsageError
from osctl.media.read import read_video_frames
from osctl.media.write import write_video
from osctl.synth.shapes import (
    BACKGROUNDS,
    COLORS,
    DECODE_SAFE_WIDTHS,
    MOTIONS,
    SHAPES,
    SIZES,
    all_combinations,
    caption,
    frame_sizes,
    held_out_combinations,
    plan_dataset,
    synth_shapes,
    training_combinations,
)

OPTIONS = {"videos": 10, "images": 6, "seed": 7}


class RefuseEverything(pickle.Unpickler):
    """A pickle loader that admits no global at all: only plain containers and scalars load."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"global {module}.{name} refused")


def restricted_load(path: Path):
    return RefuseEverything(io.BytesIO(path.read_bytes())).load()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "data"
    synth_shapes(out, **OPTIONS)
    return out


def load_records(out: Path) -> tuple[list[dict], list[dict]]:
    videos = orjson.loads((out / "annotations" / "videos.json").read_bytes())
    images = restricted_load(out / "annotations" / "images.pkl")
    return videos, images


def test_layout_and_data_txt_join_two_roots(dataset):
    lines = [ln for ln in (dataset / "data.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == ["videos,annotations/videos.json", "images,annotations/images.pkl"]
    for line in lines:
        root, annotation = line.rsplit(",", 1)
        assert not Path(root).is_absolute() and (dataset / root).is_dir() and (dataset / annotation).is_file()
    videos, images = load_records(dataset)
    assert len(videos) == OPTIONS["videos"] and len(images) == OPTIONS["images"]
    assert all((dataset / "videos" / r["path"]).is_file() and r["path"].endswith(".mp4") for r in videos)
    assert {Path(r["path"]).suffix for r in images} == {".png", ".jpg"}
    assert all((dataset / "images" / r["path"]).is_file() for r in images)
    manifest = orjson.loads((dataset / "synth.json").read_bytes())
    assert manifest["complete"] is True and manifest["options"] == {**OPTIONS, "hold_out": True,
                                                                   "video_backgrounds": ["black"], "lane_spread": 0.0}
    assert sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file()
                  and p.name != "synth.json") == manifest["files"]
    prompts = (dataset / "held_out_prompts.txt").read_text().splitlines()
    assert prompts[0] == "a red circle moving left on a black background"
    assert len(prompts) == len(held_out_combinations())


def test_same_seed_same_files_other_seed_differs(dataset, tmp_path):
    again = tmp_path / "again"
    synth_shapes(again, **OPTIONS)
    for name in ("data.txt", "annotations/videos.json", "annotations/images.pkl", "held_out_prompts.txt"):
        assert (again / name).read_bytes() == (dataset / name).read_bytes(), name
    for media in sorted((dataset / "videos").iterdir()):
        np.testing.assert_array_equal(read_video_frames(media), read_video_frames(again / "videos" / media.name))
    for media in sorted((dataset / "images").iterdir()):
        assert (again / "images" / media.name).read_bytes() == media.read_bytes()
    other = plan_dataset(OPTIONS["videos"], OPTIONS["images"], seed=OPTIONS["seed"] + 1)
    assert other != plan_dataset(OPTIONS["videos"], OPTIONS["images"], seed=OPTIONS["seed"])


def test_video_records_match_the_media_in_pyav_and_decord(dataset):
    videos, _ = load_records(dataset)
    regular = {(s.height, s.width) for s in SIZES}
    for rec in videos:
        path = dataset / "videos" / rec["path"]
        h, w = rec["resolution"]["height"], rec["resolution"]["width"]
        lead = rec["cut"][0] if "cut" in rec else 0
        total = rec["num_frames"] + 2 * lead
        frames = read_video_frames(path)
        assert frames.shape == (total, h, w, 3), rec["path"]
        with av.open(str(path)) as container:
            assert float(container.streams.video[0].average_rate) == pytest.approx(rec["fps"])
        reader = decord.VideoReader(str(path), num_threads=1)
        assert len(reader) == total
        assert reader.get_avg_fps() == pytest.approx(rec["fps"], rel=1e-3)
        assert reader.get_batch([0, total // 2, total - 1]).asnumpy().shape == (3, h, w, 3)
        if "cut" in rec:
            start, end = rec["cut"]
            assert end - start == rec["num_frames"] and end <= total
            background = np.array(BACKGROUNDS[rec["synth"]["background"]])
            assert np.abs(frames[0].astype(int) - background).max() < 12  # lead-in is empty background
        if "crop" in rec:
            x0, x1, y0, y1 = rec["crop"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert (y1 - y0, x1 - x0) in regular  # the cropped sample lands in a regular bucket
        else:
            assert (h, w) in regular


def test_image_records_match_the_media(dataset):
    _, images = load_records(dataset)
    for rec in images:
        with Image.open(dataset / "images" / rec["path"]) as image:
            assert image.size == (rec["resolution"]["width"], rec["resolution"]["height"])
            assert image.format == ("PNG" if rec["path"].endswith(".png") else "JPEG")
        assert "num_frames" not in rec and "cut" not in rec and rec["synth"]["motion"] == "still"


def test_records_are_plain_and_optional_fields_appear_on_some(dataset):
    videos, images = load_records(dataset)  # the pickle loads with every global refused
    records = videos + images
    for key in ("aesthetic", "tech", "motion", "crop"):
        present = [r for r in records if key in r]
        assert 0 < len(present) < len(records), key
        assert all(isinstance(r[key], float if key != "crop" else list) for r in present)
    assert 0 < sum("cut" in r for r in videos) < len(videos)
    assert any(isinstance(r["cap"], list) for r in records) and any(isinstance(r["cap"], str) for r in records)
    assert all(isinstance(r["num_frames"], int) and r["fps"] in (12, 24, 30) for r in videos)
    assert all(isinstance(r["resolution"]["height"], int) for r in records)
    for rec in images:  # every value is a plain type: the restricted loader already proved it, JSON agrees
        assert orjson.loads(orjson.dumps(rec)) == rec


def test_captions_name_colour_shape_and_motion(dataset):
    videos, images = load_records(dataset)
    for rec in videos + images:
        truth = rec["synth"]
        assert truth["color"] in COLORS and truth["shape"] in SHAPES and truth["motion"] in MOTIONS
        assert truth["background"] in BACKGROUNDS
        assert f"-{truth['color']}-{truth['shape']}-{truth['motion']}-on-{truth['background']}." in rec["path"]
        caps = rec["cap"] if isinstance(rec["cap"], list) else [rec["cap"]]
        motion_word = {"still": ("still", "motionless")}.get(truth["motion"], (truth["motion"],))
        for cap in caps:
            assert truth["color"] in cap and truth["shape"] in cap and truth["background"] in cap, cap
            assert any(word in cap for word in motion_word), cap
    assert {r["synth"]["background"] for r in videos} == {"black"}  # clips: black by default
    assert {r["synth"]["background"] for r in images} == set(BACKGROUNDS)  # images: every background
    assert caption("red", "circle", "left", "black") == "a red circle moving left on a black background"
    assert caption("blue", "square", "still", "grey") == "a still blue square on a grey background"


def test_video_backgrounds_are_balanced_and_checked():
    plans = plan_dataset(12, 4, seed=5, video_backgrounds=["grey", "black", "grey"])  # repeats collapse
    clips = [p.background for p in plans if p.kind == "video"]
    assert sorted(clips) == ["black"] * 6 + ["grey"] * 6
    assert plan_dataset(4, 0, seed=5, video_backgrounds=("grey",))[0].background == "grey"
    for bad, message in (([], "at least one"), (["pink"], "'pink' is not a background")):
        with pytest.raises(UsageError, match=message):
            plan_dataset(2, 0, video_backgrounds=bad)


def test_motion_is_steady_and_inside_the_frame():
    for plan in plan_dataset(40, 0, seed=3):
        x0, x1, y0, y1 = plan.crop or (0, plan.width, 0, plan.height)
        for cx, cy in (plan.start, plan.end):
            assert x0 + plan.size / 2 <= cx <= x1 - plan.size / 2 and y0 + plan.size / 2 <= cy <= y1 - plan.size / 2
        dx, dy = plan.end[0] - plan.start[0], plan.end[1] - plan.start[1]
        expected = {"left": dx < 0 == dy, "right": dx > 0 == dy, "up": dy < 0 == dx, "down": dy > 0 == dx,
                    "still": dx == 0 == dy}[plan.motion]
        assert expected, plan
        if plan.motion != "still":  # edge to edge: 2 px inside one side of the frame to 2 px inside the other
            side = (x1 - x0) if dx else (y1 - y0)
            assert abs(abs(dx or dy) - (side - 4 - plan.size)) < 0.02


def _lane(plan) -> tuple[float, float, float]:
    """(lane coordinate, its lowest and its highest possible value) of a moving plan, full-frame pixels."""
    x0, x1, y0, y1 = plan.crop or (0, plan.width, 0, plan.height)
    lo, hi = ((y0, y1) if plan.motion in ("left", "right") else (x0, x1))
    lane = plan.start[1] if plan.motion in ("left", "right") else plan.start[0]
    return lane, lo + 2 + plan.size / 2, hi - 2 - plan.size / 2


def test_clip_shapes_keep_to_the_centre_lines_unless_the_lane_may_spread():
    """The prompt names the direction, not the place: by default clips keep their shape on the centre lines."""
    centred = [p for p in plan_dataset(60, 0, seed=4) if p.motion != "still"]
    assert centred
    for plan in centred:
        lane, lo, hi = _lane(plan)
        assert abs(lane - (lo + hi) / 2) <= 0.01, plan
    spread = [p for p in plan_dataset(60, 0, seed=4, lane_spread=1.0) if p.motion != "still"]
    offsets = [abs(_lane(p)[0] - (_lane(p)[1] + _lane(p)[2]) / 2) / ((_lane(p)[2] - _lane(p)[1]) / 2) for p in spread]
    assert max(offsets) > 0.5 and all(o <= 1.0 + 1e-6 for o in offsets)
    half = [p for p in plan_dataset(60, 0, seed=4, lane_spread=0.5) if p.motion != "still"]
    for a, b in zip(half, spread, strict=True):  # the same draws, pulled halfway to the middle
        (la, lo, hi), lb = _lane(a), _lane(b)[0]
        assert abs((la - (lo + hi) / 2) - 0.5 * (lb - (lo + hi) / 2)) <= 0.01
    for plan in (p for p in plan_dataset(60, 0, seed=4) if p.motion == "still"):  # still clips: the middle
        x0, x1, y0, y1 = plan.crop or (0, plan.width, 0, plan.height)
        assert plan.start == plan.end and plan.start == pytest.approx(((x0 + x1) / 2, (y0 + y1) / 2), abs=0.01)
    assert len({p.start for p in plan_dataset(60, 0, seed=4, lane_spread=1.0) if p.motion == "still"}) > 3
    images = [p.start for p in plan_dataset(0, 30, seed=4) if p.kind == "image"]  # images: anywhere, always
    assert images == [p.start for p in plan_dataset(0, 30, seed=4, lane_spread=1.0) if p.kind == "image"]
    assert len(set(images)) > 3
    for bad in (-0.1, 1.5, "x"):
        with pytest.raises(UsageError, match="--lane-spread"):
            plan_dataset(2, 0, lane_spread=bad)


def test_clips_resample_at_4_fps_to_exactly_5_7_or_9_frames_spanning_the_whole_clip():
    from osctl.data.rules import candidate_indices

    counts = set()
    for plan in (p for p in plan_dataset(30, 0, seed=2) if p.kind == "video"):
        frames = candidate_indices(0, plan.content_frames, plan.fps, 4.0)
        assert frames[0] == 0 and frames[-1] == plan.content_frames - 1, plan  # first and last content frame
        counts.add(len(frames))
    assert counts == {5, 7, 9}


def test_held_out_combinations_are_excluded_but_their_parts_are_trained():
    held = set(held_out_combinations())
    assert held and held <= set(all_combinations())
    plans = plan_dataset()
    videos = [p for p in plans if p.kind == "video"]
    trained = {(p.color, p.shape, p.motion) for p in plans}
    assert not trained & held
    assert {(p.color, p.shape, p.motion) for p in videos} == set(training_combinations(True))  # all covered
    for c, s, m in held:  # every pair of a held-out triple is still seen in training
        assert any(t[0] == c and t[1] == s for t in trained)
        assert any(t[0] == c and t[2] == m for t in trained)
        assert any(t[1] == s and t[2] == m for t in trained)
    everything = {(p.color, p.shape, p.motion) for p in plan_dataset(hold_out=False)}
    assert held <= everything


def test_every_width_written_is_read_by_decord(tmp_path):
    sizes = frame_sizes()
    assert {w for _, w in sizes} == DECODE_SAFE_WIDTHS
    for h, w in sizes:
        path = write_video(tmp_path / f"{h}x{w}.mp4", np.full((5, h, w, 3), 90, np.uint8), 12)
        batch = decord.VideoReader(str(path), num_threads=1).get_batch([0, 2, 4]).asnumpy()
        assert batch.shape == (3, h, w, 3)


def test_reuse_rewrite_and_refusals(tmp_path):
    out = tmp_path / "d"
    first = synth_shapes(out, videos=3, images=2, seed=1)
    assert not first.reused and first.videos == 3 and first.images == 2
    stamp = (out / "annotations" / "videos.json").stat().st_mtime_ns
    again = synth_shapes(out, videos=3, images=2, seed=1)
    assert again.reused and (out / "annotations" / "videos.json").stat().st_mtime_ns == stamp
    old = set(first.files)
    smaller = synth_shapes(out, videos=2, images=0, seed=1, hold_out=False)
    assert not smaller.reused and not any((out / "images").glob("*"))
    left = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"synth.json"}
    assert left == set(smaller.files) and old - left  # the earlier run's extra files are gone
    assert (out / "data.txt").read_text().splitlines()[1:] == ["videos,annotations/videos.json"]
    assert not synth_shapes(out, videos=2, images=0, seed=1, hold_out=False, force=True).reused

    unrelated = tmp_path / "mine"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not empty"):
        synth_shapes(unrelated, videos=1, images=0)
    assert (unrelated / "notes.txt").read_text() == "keep me"
    with pytest.raises(UsageError, match="empty dataset"):
        synth_shapes(tmp_path / "e", videos=0, images=0)
    with pytest.raises(UsageError, match="seed"):
        synth_shapes(tmp_path / "e", videos=1, images=0, seed=-1)
    assert not (tmp_path / "e").exists()


def test_every_frame_size_fits_a_demo_bucket_without_a_crop():
    """Under recipes/demo.yaml each frame size resizes straight to its bucket: the bucket crop, which would
    cut off the start or end of a movement, removes nothing."""
    from osctl.data.bucket import BucketSettings
    from osctl.data.stream.transforms import resize_size, target_shape
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import recipe_geometry

    loaded = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml", [])
    rules = BucketSettings.from_recipe(loaded.recipe, geometry=recipe_geometry(loaded, default_registry())).resolution
    shapes = {}
    for size in SIZES:
        assert resize_size(size.height, size.width, rules) == target_shape(size.height, size.width, rules)
        shapes[(size.height, size.width)] = target_shape(size.height, size.width, rules)
    assert shapes == {(128, 128): (16, 16), (120, 200): (12, 20), (200, 120): (20, 12)}
