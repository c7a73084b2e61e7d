"""Training from `osctl data cache` against training that encodes every step, measured in the same run.

CPU (default): the tiny WF-VAE, tiny T5 and tiny v1.3 transformer on 17 x 64 x 64 clips of the shapes
dataset (force resolution, batch 4, fp32, the loader in the main process). Every round starts one
training process encoding on the fly (``data.cache: off``) and one reading the cache (``require``),
each a fresh process so its peak RSS is its own, and one process that only iterates the batch source
over the cache. Printed: steps/s of each (after warm-up steps), their ratio (target >= 3), peak RSS of
both and the encoders' weights (target: cached RSS <= on-the-fly RSS - encoders' weights), and the
cached loader's batches/s over the cached training's steps/s (target >= 10). Nothing asserts a timing.

    python benchmarks/bench_cache.py [--rounds 5] [--steps 12] [--batch 4] [--videos 36]
    python benchmarks/bench_cache.py --storage        # the storage format comparison (benchmarks/README.md)
    python benchmarks/bench_cache.py --text-trim --samples 32   # text states whole vs trimmed to each prompt
    python benchmarks/bench_cache.py --real-size      # GPU: v1.3 2B/122, 93 x 352 x 640, real-size random encoders
    python benchmarks/bench_cache.py --real-size --smoke   # the same code at toy sizes (any machine)

``--real-size`` times one training step (bf16 weights and AdamW, gradient checkpointing) that first encodes a
93 x 352 x 640 clip with the released-size WF-VAE and 512 tokens with an mT5-XXL-size encoder (random
weights, built on the GPU) against the same step fed precomputed latents and text states, each in a
fresh process, and prints step times and peak GPU memory (the cached process never builds the encoders).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "plugins"))

RECIPE = """
model: {{name: opensora_v1_3, preset: tiny, in_channels: 8, out_channels: 8}}
autoencoder: {{name: wfvae, preset: tiny}}
text_encoder: {{name: tiny_t5, d_model: 32, max_length: 32, cache_dir: {tcache}}}
data:
  data: {data}
  num_frames: 17
  train_fps: 16
  min_frames: 17
  force_resolution: true
  max_height: 64
  max_width: 64
  hw_stride: 16
  group_data: true
  min_bucket_batches: 0
  num_workers: 0
  cache: {{dtype: bf16}}
train: {{output_dir: {out}, mixed_precision: fp32, train_batch_size: {batch}, checkpointing_steps: 100000, log_interval: 1000,
        use_ema: false, seed: 3}}
parallel: {{strategy: single}}
"""


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": path}


def _child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _peak_rss_mb() -> float:
    """This process's peak resident memory: ``VmHWM`` (``ru_maxrss`` would include the parent's peak, which
    Linux carries across fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------------ CPU


def _checked(root: Path, overrides: list[str]) -> Any:
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe

    return check_recipe(load_recipe(root / "recipe.yaml", overrides), default_registry())


def child_train(root: Path, mode: str, steps: int, warmup: int) -> dict[str, Any]:
    """One training run (``data.cache`` ``mode``); steps/s after ``warmup`` steps, peak RSS, encoders' bytes."""
    from osctl.plugin_manager import default_registry
    from osctl.train.loop import train
    from osctl.train.run import TrainOptions, setup_training

    stamps: list[float] = []
    out = tempfile.mkdtemp(dir=root)
    checked = _checked(root, [f"data.cache.mode={mode}", f"train.max_steps={warmup + steps}", f"train.output_dir={out}",
                              f"data.cache.dir={root / 'cache'}"])
    parts = setup_training(checked, default_registry(), TrainOptions(on_step=lambda step, record: stamps.append(
        time.perf_counter())))
    encoders = sum(p.numel() * p.element_size() for c in (parts.autoencoder, parts.text_encoder) if c is not None
                   for p in c.parameters())
    train(parts)
    return {"steps_per_s": steps / (stamps[-1] - stamps[warmup - 1]), "peak_rss_mb": _peak_rss_mb(),
            "encoder_mb": encoders / 2**20}


def child_loader(root: Path, batches: int) -> dict[str, Any]:
    """Batches/s of the batch source over the cache alone (no model)."""
    from osctl.cache.training import training_source
    from osctl.parallel.dist import init_distributed
    from osctl.parallel.layout import ParallelLayout
    from osctl.plugin_manager import default_registry

    out = tempfile.mkdtemp(dir=root)
    checked = _checked(root, ["data.cache.mode=require", f"train.output_dir={out}", f"data.cache.dir={root / 'cache'}"])
    info = init_distributed()
    layout = ParallelLayout.from_recipe(checked.loaded.recipe, world_size=1)
    source, _, cache = training_source(checked, default_registry(), info, layout=layout, dp_rank=0)
    assert cache is not None
    stream = iter(source)
    for _ in range(5):
        next(stream)
    started = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return {"batches_per_s": batches / (time.perf_counter() - started)}


def prepare(root: Path, videos: int, batch: int) -> None:
    """The shapes dataset, the recipe and the cache (built once, not timed against anything)."""
    from osctl.cache.build import BuildOptions, build_cache
    from osctl.plugin_manager import default_registry
    from osctl.synth.shapes import synth_shapes

    synth_shapes(root / "shapes", videos=videos, images=0, seed=0)
    (root / "recipe.yaml").write_text(RECIPE.format(data=root / "shapes" / "data.txt", out=root / "out",
                                                    tcache=root / "tcache", batch=batch))
    started = time.perf_counter()
    summary = build_cache(_checked(root, [f"data.cache.dir={root / 'cache'}"]), default_registry(), BuildOptions())
    print(f"cache: {summary['ok']} samples ({summary['bad']} bad), {summary['texts']} caption variants, "
          f"{summary['bytes'] / 1e6:.2f} MB, built in {time.perf_counter() - started:.1f} s", flush=True)


def cpu(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    prepare(root, args.videos, args.batch)
    rows: dict[str, list[dict[str, Any]]] = {"off": [], "require": [], "loader": []}
    for number in range(args.rounds):
        for mode in ("off", "require"):
            rows[mode].append(_child(["train", str(root), mode, str(args.steps), str(args.warmup)]))
        rows["loader"].append(_child(["loader", str(root), str(args.batches)]))
        off, on, loader = rows["off"][-1], rows["require"][-1], rows["loader"][-1]
        print(f"round {number + 1}: on the fly {off['steps_per_s']:.2f} steps/s, {off['peak_rss_mb']:.0f} MB; "
              f"cache {on['steps_per_s']:.2f} steps/s, {on['peak_rss_mb']:.0f} MB; loader over the cache "
              f"{loader['batches_per_s']:.1f} batches/s", flush=True)

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[mode])

    speed_off, speed_on = median("off", "steps_per_s"), median("require", "steps_per_s")
    rss_off, rss_on = median("off", "peak_rss_mb"), median("require", "peak_rss_mb")
    encoders = rows["off"][0]["encoder_mb"]
    loader = median("loader", "batches_per_s")
    print(f"\nsteps/s: cache {speed_on:.2f} vs on the fly {speed_off:.2f}: {speed_on / speed_off:.2f}x (target >= 3)")
    print(f"peak RSS: cache {rss_on:.0f} MB vs on the fly {rss_off:.0f} MB - encoders' weights {encoders:.1f} MB = "
          f"{rss_off - encoders:.0f} MB (target: cache <= that; margin {rss_off - encoders - rss_on:.0f} MB)")
    print(f"loader over the cache: {loader:.1f} batches/s = {loader / speed_on:.1f}x the cached step rate (target >= 10)")


# ------------------------------------------------------------------------------------------------ storage


def storage(args: argparse.Namespace) -> None:
    """Write the same posteriors and text states as safetensors shards + Arrow offsets (osctl's format) and as
    Arrow IPC files with fixed-shape tensor columns; compare write time, size and random-read rate."""
    import numpy as np
    import pyarrow as pa
    import torch

    from osctl.cache.store import EncodedSample, ShardMap, ShardWriter, read_table, write_tables

    root = Path(tempfile.mkdtemp(prefix="bench-cache-storage-"))
    n, per_shard = args.samples, 64
    latent, text = (8, 24, 60, 80), (512, 4096)
    if args.small:
        latent, text = (8, 5, 8, 8), (32, 32)
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(latent, generator=g).to(torch.bfloat16)
    states = torch.randn(text, generator=g).to(torch.bfloat16)
    mask = torch.ones(text[0], dtype=torch.int64)

    started = time.perf_counter()
    folder = root / "st"
    for shard in range(n // per_shard):
        writer = ShardWriter(folder / "shards", shard, root=folder, dtype=torch.bfloat16, spec_sha="b")
        for i in range(shard * per_shard, (shard + 1) * per_shard):
            writer.add(EncodedSample(i, views=[(mean, mean)], texts=[("t", states, mask)]))
        writer.publish()
    write_tables(folder, n, per_shard, spec_sha="b")
    st_write = time.perf_counter() - started
    st_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    started = time.perf_counter()
    arrow = root / "arrow"
    arrow.mkdir()
    mean_type = pa.fixed_shape_tensor(pa.uint16(), latent)
    text_type = pa.fixed_shape_tensor(pa.uint16(), text)
    schema = pa.schema([("mean", mean_type), ("std", mean_type), ("states", text_type),
                        ("mask", pa.fixed_shape_tensor(pa.int64(), (text[0],)))])
    raw_mean = mean.view(torch.uint16).numpy().reshape(1, *latent)
    raw_states = states.view(torch.uint16).numpy().reshape(1, *text)
    raw_mask = mask.numpy().reshape(1, text[0])
    for shard in range(n // per_shard):
        with pa.OSFile(str(arrow / f"shard-{shard:06d}.arrow"), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
            for _ in range(per_shard):
                w.write_batch(pa.record_batch([
                    pa.FixedShapeTensorArray.from_numpy_ndarray(raw_mean),
                    pa.FixedShapeTensorArray.from_numpy_ndarray(raw_mean),
                    pa.FixedShapeTensorArray.from_numpy_ndarray(raw_states),
                    pa.FixedShapeTensorArray.from_numpy_ndarray(raw_mask)], schema=schema))
    arrow_write = time.perf_counter() - started
    arrow_bytes = sum(p.stat().st_size for p in arrow.iterdir())

    samples, _ = read_table(folder / "samples.arrow")
    texts, _ = read_table(folder / "texts.arrow")
    shards = ShardMap(folder)
    nbytes = int(np.prod(latent)) * 2
    tables = [pa.ipc.open_file(pa.memory_map(str(arrow / f"shard-{s:06d}.arrow"))).read_all()
              for s in range(n // per_shard)]

    def read_safetensors(order: np.ndarray) -> None:
        for i in order:
            shard, offset = int(samples["shard"][i]), int(samples["latent_offset"][i])
            text_offset = int(texts["offset"][int(samples["text_start"][i])])
            torch.stack([shards.tensor(shard, offset, latent, torch.bfloat16),
                         shards.tensor(shard, offset + nbytes, latent, torch.bfloat16)])
            shards.tensor(shard, text_offset, text, torch.bfloat16).clone()

    def read_arrow(order: np.ndarray) -> None:
        for i in order:
            table, row = tables[i // per_shard], int(i % per_shard)
            got = {}
            for name in ("mean", "std", "states"):
                chunk = table.column(name).chunk(row)  # one record batch per sample
                got[name] = torch.from_numpy(chunk.to_numpy_ndarray()[0]).view(torch.bfloat16)
            torch.stack([got["mean"], got["std"]])
            got["states"].clone()

    rates: dict[str, list[float]] = {"st": [], "arrow": []}
    for number in range(args.rounds * 2):  # alternate the formats, a fresh random order each pass
        name, read = (("st", read_safetensors), ("arrow", read_arrow))[number % 2]
        order = np.random.default_rng(number).permutation(n)[: args.reads]
        started = time.perf_counter()
        read(order)
        rates[name].append(len(order) / (time.perf_counter() - started))
    st_read, arrow_read = statistics.median(rates["st"]), statistics.median(rates["arrow"])
    print(f"{n} samples of latents {latent} (mean + std) and text {text}, bf16, {per_shard} per shard")
    print(f"safetensors + Arrow offsets: write {n / st_write:.0f} samples/s, {st_bytes / n / 2**20:.2f} MiB/sample, "
          f"random read {st_read:.0f} samples/s (median of {args.rounds})")
    print(f"Arrow IPC tensor columns:    write {n / arrow_write:.0f} samples/s, {arrow_bytes / n / 2**20:.2f} MiB/sample, "
          f"random read {arrow_read:.0f} samples/s")


def text_trim(args: argparse.Namespace) -> None:
    """Write the same caption variants' text states (512 x 4096 bf16, prompts of 20-120 tokens) whole and trimmed
    to each prompt; compare bytes per variant and the random-read rate of both at the padded length."""
    import shutil

    root = Path(tempfile.mkdtemp(prefix="bench-cache-text-"))
    try:
        _text_trim(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # 4 MiB per whole variant: do not leave them behind


def _text_trim(args: argparse.Namespace, root: Path) -> None:
    import numpy as np
    import torch

    from osctl.cache.store import EncodedSample, ShardMap, ShardWriter, read_table, write_tables

    n, variants, per_shard = args.samples, args.variants, 16
    text = (32, 32) if args.small else (512, 4096)
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 121, size=(n, variants)).clip(max=text[0])  # tokens of each prompt, </s> included
    g = torch.Generator().manual_seed(0)
    states = torch.randn(text, generator=g).to(torch.bfloat16)
    mean = torch.zeros(1, 1, 1, 1, dtype=torch.bfloat16)
    sizes, rates = {}, {}
    for trim in (False, True):
        folder = root / ("trimmed" if trim else "whole")
        for shard in range(-(-n // per_shard)):
            writer = ShardWriter(folder / "shards", shard, root=folder, dtype=torch.bfloat16, spec_sha="b",
                                 trim_text=trim)
            for i in range(shard * per_shard, min(n, (shard + 1) * per_shard)):
                texts = []
                for k in range(variants):
                    mask = torch.zeros(text[0], dtype=torch.int64)
                    mask[: int(lengths[i, k])] = 1
                    texts.append((f"{i} {k}", states, mask))
                writer.add(EncodedSample(i, views=[(mean, None)], texts=texts))
            writer.publish()
        write_tables(folder, n, per_shard, spec_sha="b")
        sizes[trim] = sum(p.stat().st_size for p in (folder / "shards").iterdir())
        samples, _ = read_table(folder / "samples.arrow")
        table, _ = read_table(folder / "texts.arrow")
        shards = ShardMap(folder)
        passes = []
        for number in range(args.rounds):
            order = np.random.default_rng(number).permutation(n * variants)[: args.reads]
            started = time.perf_counter()
            for row in order:
                sample = int(row // variants)
                shard, offset = int(samples["shard"][sample]), int(table["offset"][row])
                got, _ = shards.text(shard, offset, int(table["length"][row]), text, torch.bfloat16)
                got.clone()  # what the collate's stack does
            passes.append(len(order) / (time.perf_counter() - started))
        rates[trim] = statistics.median(passes)
    entries = n * variants
    whole, trimmed = sizes[False] / entries, sizes[True] / entries
    print(f"{n} samples x {variants} caption variants, text states {text} bf16 + int64 mask, prompts of 20-120 "
          f"tokens (mean {lengths.mean():.1f})")
    print(f"whole:   {whole / 2**20:.3f} MiB per variant, read {rates[False]:.0f} variants/s (median of {args.rounds})")
    print(f"trimmed: {trimmed / 2**20:.3f} MiB per variant, read {rates[True]:.0f} variants/s: {trimmed / whole:.1%} "
          f"of the whole size ({whole / trimmed:.1f}x smaller)")
    print(f"1k clips x 20 variants: {whole * 20_000 / 1e9:.1f} GB whole, {trimmed * 20_000 / 1e9:.1f} GB trimmed")


# ------------------------------------------------------------------------------------------------ GPU


def child_realsize(mode: str, smoke: bool, steps: int) -> dict[str, Any]:
    """One process: a v1.3 training step fed by the encoders (``encode``) or by stored tensors (``cache``)."""
    import torch
    from transformers import MT5Config, MT5EncoderModel

    from osctl.latent_moments import LatentMoments
    from osctl_builtin.autoencoders.wfvae.wrapper import WFVAEAutoencoder
    from osctl_builtin.models.osp_v13.presets import preset_config
    from osctl_builtin.models.osp_v13.transformer import OpenSoraT2V_v1_3

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    frames, height, width, tokens = (5, 32, 32, 16) if smoke else (93, 352, 640, 512)
    cfg = preset_config("tiny" if smoke else "2B/122")
    text_dim = cfg["caption_channels"]
    torch.manual_seed(0)
    with torch.device(device):
        model = OpenSoraT2V_v1_3(**cfg).to(dtype)  # bf16 weights and AdamW states: one GPU, no ZeRO sharding
    model.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    video = torch.rand(1, 3, frames, height, width, device=device) * 2 - 1
    ids = torch.randint(0, 1000, (1, tokens), device=device)
    text_mask = torch.ones(1, tokens, dtype=torch.long, device=device)
    ae = te = None
    if mode == "encode":
        ae = WFVAEAutoencoder.from_preset("tiny" if smoke else "released", dtype=dtype, device=device)
        t5 = MT5Config(vocab_size=250112 if not smoke else 1000, d_model=text_dim, d_kv=64 if not smoke else 8,
                       d_ff=10240 if not smoke else 64, num_layers=24 if not smoke else 2,
                       num_heads=64 if not smoke else 4, feed_forward_proj="gated-gelu")
        with torch.device(device):
            te = MT5EncoderModel._from_config(t5, torch_dtype=dtype).eval()
    latent_shape = (1, 8, (frames - 1) // 4 + 1, height // 8, width // 8)
    stored_mean = torch.randn(latent_shape, device=device, dtype=dtype)
    stored_std = torch.rand(latent_shape, device=device, dtype=dtype)
    stored_text = torch.randn(1, tokens, text_dim, device=device, dtype=dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    generator = torch.Generator(device).manual_seed(0)
    times = []
    for _ in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        with torch.no_grad():
            if ae is not None and te is not None:
                latents = ae.encode(video, sample=True, generator=generator).float()
                text = te(input_ids=ids, attention_mask=text_mask).last_hidden_state
            else:
                latents = LatentMoments(stored_mean, stored_std).latents(generator=generator).float()
                text = stored_text
        noise = torch.randn_like(latents)
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            out = model(latents + noise, torch.tensor([500], device=device), text.unsqueeze(1).to(dtype),
                        attention_mask=torch.ones(latents.shape[0], *latents.shape[2:], device=device),
                        encoder_attention_mask=text_mask.unsqueeze(1), return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(out.float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else _peak_rss_mb() / 1024
    return {"step_s": statistics.median(times[1:]), "peak_gib": peak,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def realsize(args: argparse.Namespace) -> None:
    flag = ["1" if args.smoke else "0"]
    encode = _child(["realsize", "encode", *flag, str(args.steps)])
    cached = _child(["realsize", "cache", *flag, str(args.steps)])
    print(f"device {encode['device']} ({'smoke sizes' if args.smoke else 'v1.3 2B/122, 93x352x640, 512 tokens'})")
    print(f"step with encoders: {encode['step_s'] * 1000:.0f} ms, peak {encode['peak_gib']:.2f} GiB")
    print(f"step from the cache: {cached['step_s'] * 1000:.0f} ms, peak {cached['peak_gib']:.2f} GiB")
    print(f"speed-up {encode['step_s'] / cached['step_s']:.2f}x, memory saved {encode['peak_gib'] - cached['peak_gib']:.2f} GiB")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "train":
            result = child_train(Path(rest[0]), rest[1], int(rest[2]), int(rest[3]))
        elif kind == "loader":
            result = child_loader(Path(rest[0]), int(rest[1]))
        else:
            result = child_realsize(rest[0], rest[1] == "1", int(rest[2]))
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps per run")
    parser.add_argument("--batches", type=int, default=200, help="batches the loader-only run times")
    parser.add_argument("--videos", type=int, default=36, help="clips in the shapes dataset")
    parser.add_argument("--batch", type=int, default=4, help="train.train_batch_size")
    parser.add_argument("--storage", action="store_true", help="compare storage formats instead")
    parser.add_argument("--samples", type=int, default=256, help="--storage, --text-trim: samples written")
    parser.add_argument("--reads", type=int, default=200, help="--storage: random reads timed")
    parser.add_argument("--small", action="store_true", help="--storage: tiny tensors (a smoke test)")
    parser.add_argument("--text-trim", action="store_true", help="text states stored whole vs trimmed to the prompt")
    parser.add_argument("--variants", type=int, default=4, help="--text-trim: caption variants per sample")
    parser.add_argument("--real-size", action="store_true", help="GPU: the real-size step with and without the cache")
    parser.add_argument("--smoke", action="store_true", help="--real-size at toy sizes (any machine)")
    args = parser.parse_args()
    if args.storage:
        storage(args)
    elif args.text_trim:
        text_trim(args)
    elif args.real_size:
        realsize(args)
    else:
        cpu(args)


if __name__ == "__main__":
    main()
