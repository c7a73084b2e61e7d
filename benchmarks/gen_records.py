"""Generate a synthetic OSP v1.3 annotation file of N records for the data benchmarks.

Usage: ``python benchmarks/gen_records.py OUT_DIR [-n 1000000] [--images 0.0] [--seed 0]``

Writes ``OUT_DIR/anno.json`` (one JSON array) and ``OUT_DIR/data.txt`` pointing at it with the media
root ``OUT_DIR/media`` (left empty: the benchmark measures annotation work, not decoding). Records mix
resolutions, durations, frame rates, optional ``cut``/``crop``/``aesthetic``/``tech``/``motion`` keys and
caption lists the way real annotation files do. The output is deterministic for a given seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import orjson

_RESOLUTIONS = [(720, 1280), (1080, 1920), (480, 640), (480, 854), (360, 640), (1920, 1080), (512, 512),
                (2160, 3840), (240, 320), (1024, 768)]
_FPS = [24, 25, 30, 29.97, 60, 16, 23.976, 50]
_WORDS = ["a", "the", "small", "large", "red", "blue", "person", "dog", "cat", "walks", "runs", "across",
          "street", "field", "river", "city", "night", "morning", "camera", "pans", "slowly", "close",
          "shot", "of", "in", "on", "with", "under", "over", "mountain", "car", "people", "crowd"]


def generate(n: int, image_share: float = 0.0, seed: int = 0) -> list[dict]:
    """Return ``n`` synthetic annotation records (videos, plus ``image_share`` of images)."""
    rng = np.random.default_rng(seed)
    res_idx = rng.integers(0, len(_RESOLUTIONS), n)
    fps_idx = rng.integers(0, len(_FPS), n)
    nframes = rng.integers(20, 900, n)
    starts = rng.integers(0, 200, n)
    is_image = rng.random(n) < image_share
    has_crop = rng.random(n) < 0.2
    has_aes = rng.random(n) < 0.7
    aes = np.round(rng.normal(5.0, 0.8, n), 3)
    tech = np.round(rng.random(n), 3)
    motion = np.round(rng.random(n) * 0.5, 4)
    cap_len = rng.integers(8, 30, n)
    word_ids = rng.integers(0, len(_WORDS), (n, 30))
    records = []
    for i in range(n):
        h, w = _RESOLUTIONS[res_idx[i]]
        cap = " ".join(_WORDS[j] for j in word_ids[i, : cap_len[i]])
        if is_image[i]:
            rec: dict = {"path": f"images/{i // 1000:04d}/{i:08d}.jpg", "cap": cap,
                         "resolution": {"height": h, "width": w}}
        else:
            nf = int(nframes[i])
            s = int(starts[i])
            rec = {"path": f"videos/{i // 1000:04d}/{i:08d}.mp4", "cap": cap if i % 7 else [cap, cap.upper()],
                   "resolution": {"height": h, "width": w}, "num_frames": nf, "fps": _FPS[fps_idx[i]],
                   "cut": [s, s + nf], "tech": float(tech[i]), "motion": float(motion[i])}
        if has_aes[i]:
            rec["aesthetic"] = float(aes[i])
        if has_crop[i]:
            rec["crop"] = [0, w - w // 10, h // 20, h]
        records.append(rec)
    return records


def main() -> None:
    """Command-line entry: write ``anno.json`` and ``data.txt`` into the output folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("-n", type=int, default=1_000_000)
    parser.add_argument("--images", type=float, default=0.0, help="share of image records")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "media").mkdir(exist_ok=True)
    records = generate(args.n, args.images, args.seed)
    (args.out / "anno.json").write_bytes(orjson.dumps(records))
    (args.out / "data.txt").write_text(f"{args.out / 'media'},{args.out / 'anno.json'}\n")
    print(f"wrote {args.n} records to {args.out / 'anno.json'}")


if __name__ == "__main__":
    main()
