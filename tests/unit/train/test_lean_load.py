"""Lean loading (meta build, filled from the files on the target device) gives the normal build + ``load_into``
bit for bit, reports the same keys, and steps aside whenever it could not."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from osctl.errors import ConfigError
from osctl.train.lean_load import build_loaded_model, is_empty
from osctl.train.weights import load_into
from tests.family_helpers import family_registry

#: (registry name, tiny options): OSP has no buffers; Wan (rotary tables) and CogVideoX (sincos positions)
#: have non-persistent buffers made when they are built
FAMILIES = {"osp": ("opensora_v1_3", {"preset": "tiny"}), "wan": ("wan", {"preset": "tiny"}),
            "cogvideox": ("cogvideox", {"preset": "tiny"}), "wan-a14b": ("wan", {"preset": "tiny-a14b"})}


@pytest.fixture(scope="module")
def registry():
    return family_registry()


def checked_for(registry, family: str, **options) -> SimpleNamespace:
    """What ``build_model`` reads of a checked recipe: the model's name and validated config."""
    name, tiny = FAMILIES[family]
    config = registry.make_config("model", name, {**tiny, **options}, where="model")
    return SimpleNamespace(loaded=SimpleNamespace(recipe=SimpleNamespace(model=SimpleNamespace(name=name))),
                           components={"model": config})


def trained_weights(registry, family: str, folder: Path) -> tuple[Path, Path]:
    """A tiny model with every weight distinct from a fresh build, saved as one safetensors file and as a
    diffusers folder (``model.path``)."""
    torch.manual_seed(7)
    model = registry.build("model", *FAMILIES[family])
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    file = folder / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, file)
    if family == "osp":
        model.save_pretrained(folder / "released")
    for name, transformer in [] if family == "osp" else model.transformers():  # one folder, or one per expert
        transformer.save_pretrained(folder / "released" / (name if len(model.transformer_names) > 1 else ""))
    return file, folder / "released"


def forward(model: torch.nn.Module) -> torch.Tensor:
    """One osctl model call on fixed inputs."""
    config = model.config
    width = getattr(config, "caption_channels", None) or getattr(config, "text_dim", None) or config.text_embed_dim
    dtype = next(model.parameters()).dtype
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, config.in_channels, 2, 8, 8, generator=generator).to(dtype)
    tokens = getattr(config, "max_text_seq_length", None) or 6  # CogVideoX's sincos positions need all of them
    text = torch.randn(1, 1, tokens, width, generator=generator).to(dtype)
    with torch.no_grad():
        return model(latents, torch.tensor([500.0]), text, encoder_attention_mask=torch.ones(1, 1, tokens),
                     return_dict=False)[0]


def assert_identical(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Every parameter and buffer (persistent or not) equal bit for bit, with the same dtype, device and
    ``requires_grad``, and the same forward."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    ba, bb = dict(a.named_buffers()), dict(b.named_buffers())
    assert list(pa) == list(pb) and list(ba) == list(bb)
    for key in pa:
        assert pa[key].dtype == pb[key].dtype and pa[key].device == pb[key].device, key
        assert pa[key].requires_grad == pb[key].requires_grad and torch.equal(pa[key], pb[key]), key
    for key in ba:
        assert ba[key].dtype == bb[key].dtype and ba[key].device == bb[key].device and torch.equal(ba[key], bb[key]), key
    assert torch.equal(forward(a.eval()), forward(b.eval()))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lean_pretrained_equals_normal_build_and_load(tmp_path, registry, family):
    file, _ = trained_weights(registry, family, tmp_path)
    checked = checked_for(registry, family)
    lean = build_loaded_model(checked, registry, weights=file, device="cpu", dtype=torch.float32)
    assert lean.lean and not is_empty(lean.model)
    torch.manual_seed(3)
    normal = registry.build("model", *FAMILIES[family], device="cpu", dtype=torch.float32)
    report = load_into(normal, file)
    assert lean.report is not None and lean.report.summary() == report.summary()
    assert_identical(lean.model, normal)


@pytest.mark.parametrize(("family", "dtype"), [("osp", torch.float32), ("osp", torch.bfloat16),
                                               ("wan", torch.float32), ("cogvideox", torch.bfloat16),
                                               ("wan-a14b", torch.float32)])
def test_lean_model_path_equals_from_pretrained(tmp_path, registry, family, dtype):
    _, released = trained_weights(registry, family, tmp_path)
    checked = checked_for(registry, family, path=str(released))
    lean = build_loaded_model(checked, registry, weights=None, device="cpu", dtype=dtype)
    assert lean.lean
    normal = registry.build("model", FAMILIES[family][0], checked.components["model"], device="cpu", dtype=dtype)
    inner = (lambda m: m) if family == "osp" else (lambda m: m.transformer)
    assert dict(inner(lean.model).config) == dict(inner(normal).config)
    for param in normal.parameters():  # from_pretrained leaves views of the mapped file, at any byte offset: some
        param.data = param.data.clone()  # CPU kernels sum in another order for such inputs (about 1e-6)
    assert_identical(lean.model, normal)


def test_wan_in_bf16_from_model_path_keeps_from_pretrained(tmp_path, registry):
    """diffusers keeps some Wan modules in float32 under a lower precision: that build stays diffusers'."""
    _, released = trained_weights(registry, "wan", tmp_path)
    checked = checked_for(registry, "wan", path=str(released))
    built = build_loaded_model(checked, registry, weights=None, device="cpu", dtype=torch.bfloat16)
    assert not built.lean and built.model.transformer.scale_shift_table.dtype == torch.float32


def test_incomplete_weights_take_the_normal_path_with_the_same_report(tmp_path, registry):
    """A missing key keeps its initial value and a wrong shape is skipped: only a normal build has those values,
    so the load is load_into's, report and all; an unexpected key alone stays lean and is reported the same."""
    torch.manual_seed(1)
    source = registry.build("model", *FAMILIES["osp"])
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    removed = next(iter(state))
    del state[removed]
    state["extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "w.safetensors")
    checked = checked_for(registry, "osp")
    torch.manual_seed(4)
    built = build_loaded_model(checked, registry, weights=tmp_path / "w.safetensors", device="cpu",
                               dtype=torch.float32)
    torch.manual_seed(4)
    normal = registry.build("model", *FAMILIES["osp"], device="cpu", dtype=torch.float32)
    report = load_into(normal, tmp_path / "w.safetensors")
    assert not built.lean and built.report.details() == report.details() and report.missing == [removed]
    assert_identical(built.model, normal)

    state[removed] = source.state_dict()[removed].contiguous()
    save_file(state, tmp_path / "w.safetensors")
    built = build_loaded_model(checked, registry, weights=tmp_path / "w.safetensors", device="cpu",
                               dtype=torch.float32)
    assert built.lean and built.report.unexpected == ["extra.weight"]
    assert built.report.summary() == load_into(normal, tmp_path / "w.safetensors").summary()


def test_torch_files_and_missing_sources(tmp_path, registry):
    """A torch file is read whole by load_into (normal path); a missing path is load_into's ConfigError."""
    torch.manual_seed(1)
    source = registry.build("model", *FAMILIES["osp"])
    torch.save(source.state_dict(), tmp_path / "w.pt")
    checked = checked_for(registry, "osp")
    built = build_loaded_model(checked, registry, weights=tmp_path / "w.pt", device="cpu", dtype=torch.float32)
    assert not built.lean and built.report.loaded == built.report.total
    with pytest.raises(ConfigError, match="does not exist"):
        build_loaded_model(checked, registry, weights=tmp_path / "nothing.safetensors", device="cpu",
                           dtype=torch.float32)


def test_memory_plan_host_loading_follows_the_loading_path(tmp_path):
    """The plan's "host RAM while loading": one chunk on a GPU run that loads lean on the device, whole or (fsdp)
    its shards; on the CPU the float32 model (or this process's shards) plus one chunk; the float32 model plus
    one chunk where the model stays in host memory; the old build + read estimate otherwise."""
    from osctl.train.memory import host_loading
    from osctl.train.weights import LOAD_CHUNK_BYTES

    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 4))
    fp32 = sum(p.numel() * 4 for p in model.parameters())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    file_bytes = (tmp_path / "w.safetensors").stat().st_size
    assert file_bytes < LOAD_CHUNK_BYTES  # the chunk is then the whole file

    def recipe(pretrained, **train):
        settings = {"lora": None, "base_dtype": "fp32", "offload": None, **train}
        return SimpleNamespace(train=SimpleNamespace(pretrained=pretrained, **settings),
                               model=SimpleNamespace(options={}), parallel=SimpleNamespace(zero_stage=2))

    lean = recipe(str(tmp_path / "w.safetensors"))
    assert host_loading(lean, model, strategy="ddp")[0] == file_bytes
    assert host_loading(lean, model, strategy="fsdp")[0] == file_bytes  # each process fills its shards on the GPU
    assert host_loading(lean, model, strategy="fsdp", device_type="cpu", world_size=2)[0] == fp32 // 2 + file_bytes
    lora = recipe(str(tmp_path / "w.safetensors"), lora=SimpleNamespace(rank=4))  # adapter added to the empty base
    assert host_loading(lora, model, strategy="fsdp")[0] == file_bytes
    assert host_loading(lean, model, strategy="ddp", device_type="cpu")[0] == fp32 + file_bytes
    assert host_loading(lean, model, strategy="deepspeed")[0] == file_bytes  # the engine takes it on the device
    lean.parallel.zero_stage = 3  # partitioned block by block as it is read
    assert host_loading(lean, model, strategy="deepspeed", device_type="cpu", world_size=2)[0] == fp32 // 2 + file_bytes
    offload = recipe(str(tmp_path / "w.safetensors"), lora=SimpleNamespace(rank=4), offload=SimpleNamespace(blocks=0))
    assert host_loading(offload, model, strategy="single")[0] == file_bytes  # no block offloaded: all to the device
    assert host_loading(offload, model, strategy="single", device_type="cpu")[0] == fp32 + file_bytes
    small_base = recipe(str(tmp_path / "w.safetensors"), lora=SimpleNamespace(rank=4), base_dtype="bf16")
    assert host_loading(small_base, model, strategy="single")[0] == file_bytes  # cast as read, on the device
    assert host_loading(small_base, model, strategy="single", device_type="cpu")[0] == fp32 + file_bytes  # no blocks
    torch_file = host_loading(recipe(str(tmp_path / "w.pt")), model, strategy="ddp")
    assert torch_file[0] == fp32 + (tmp_path / "w.pt").stat().st_size and "built in float32" in torch_file[1]
    assert host_loading(recipe(None), model, strategy="ddp")[0] == fp32  # a fresh preset


@pytest.mark.parametrize("family", ["osp", "wan"])
def test_materialise_puts_the_host_keys_on_the_cpu_and_the_rest_on_the_device(registry, tmp_path, family):
    """``train.offload``'s placement: the parameters of the offloaded blocks are made on the CPU with the file's
    values (in their storage dtype where ``storage`` says so), every other tensor on the device: here the meta
    device, so whatever is on the CPU afterwards was put there by the placement alone."""
    from safetensors.torch import load_file

    from osctl.build import build_model
    from osctl.train.activations import block_modules
    from osctl.train.frozen_base import storage_plan
    from osctl.train.lean_load import materialise, plan_lean_load
    from osctl.train.offload import offloaded_keys
    from osctl.train.weights import _weight_sources

    file, _ = trained_weights(registry, family, tmp_path)
    model = build_model(checked_for(registry, family), registry, device="cpu", dtype=torch.float32, empty=True)
    plan = plan_lean_load(model, _weight_sources(model, file), source=str(file))
    assert plan is not None
    host = offloaded_keys(model, 1)  # the last block (the tiny Wan has two)
    names = {id(m): n for n, m in model.named_modules()}
    last = [names[id(block)] + "." for block in block_modules(model)[-1:]]
    assert host == {k for k, _ in model.named_parameters() if k.startswith(tuple(last))} and host
    storage = storage_plan(model, "bf16")
    assert set(storage) & host and set(storage) - host  # cast weights both in host memory and on the device
    materialise(model, plan, device="meta", storage=storage, host_keys=host)
    saved = load_file(file)
    state = model.state_dict()
    assert {k for k, v in state.items() if not v.is_meta} == host
    for key in host:
        assert state[key].dtype == storage.get(key, torch.float32), key
        assert torch.equal(state[key], saved[key].to(state[key].dtype)), key
    assert all(b.is_meta for b in model.buffers())  # buffers not in the files follow the device too


LEAN_PEAK_SCRIPT = """
import sys, torch
from pathlib import Path
from osctl.train.lean_load import materialise, parameters_on_meta, plan_lean_load

def status(key):
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1]) * 1024

with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # the peak (VmHWM) starts again from here
before = status("VmRSS")
with parameters_on_meta():
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(48)])  # 48 x 4 MiB = 192 MiB
plan = plan_lean_load(model, [(Path(sys.argv[1]), "")], source=sys.argv[1])
report = materialise(model, plan, device="cpu", chunk_bytes=int(sys.argv[2]))
print(report.loaded, status("VmHWM") - before, status("VmRSS") - before)
"""


def test_lean_loading_on_the_cpu_holds_the_model_and_one_chunk(tmp_path):
    """Measured in a fresh process: building on the meta device and filling 192 MiB from the mapped file, 16 MiB
    at a time, peaks at the model plus about a chunk (the mapped pages of each chunk are let go before the next)."""
    import os
    import subprocess
    import sys

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak-memory counter")
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(48)])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    model_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    chunk = 16 * 2**20
    out = subprocess.run([sys.executable, "-c", LEAN_PEAK_SCRIPT, str(tmp_path / "w.safetensors"), str(chunk)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"})
    loaded, peak, kept = map(int, out.stdout.split())
    assert loaded == 96
    assert kept >= model_bytes  # the model's own memory, privately copied (never the mapped file)
    assert peak < model_bytes + 2 * chunk + 16 * 2**20, f"loading peaked {(peak - model_bytes) / 2**20:.0f} MiB over"


@pytest.mark.parametrize("base_dtype", ["bf16", "fp8_e4m3"])
def test_a_lora_base_in_a_smaller_dtype_is_cast_as_it_is_read(tmp_path, monkeypatch, base_dtype):
    """``train.base_dtype`` with lean loading: each block linear is stored in its dtype as it is read (the float32
    tensor never exists), and the run is the one that loads the base in float32 and casts it afterwards: the same
    adapter (made in float32), the same base fingerprint, the same stored weights and the same losses."""
    import osctl.train.lean_load as lean_load
    from osctl.plugin_manager import default_registry
    from osctl.recipe.load import load_recipe
    from osctl.recipe.validate import check_recipe
    from osctl.train.frozen_base import STORAGE_DTYPES, block_linears
    from osctl.train.loop import train
    from osctl.train.run import TrainOptions, setup_training
    from tests.train_helpers import SyntheticClips, write_tiny_recipe

    registry = default_registry()
    recipe = write_tiny_recipe(tmp_path, tmp_path / "out", tmp_path / "cache")
    base = check_recipe(load_recipe(recipe), registry)
    torch.manual_seed(11)
    weights = registry.build("model", "opensora_v1_3", base.components["model"])
    save_file({k: v.contiguous() for k, v in weights.state_dict().items()}, tmp_path / "base.safetensors")
    sets = [f"train.pretrained={tmp_path / 'base.safetensors'}", "train.lora={rank: 4, init: random}",
            f"train.base_dtype={base_dtype}", "train.max_steps=2", "train.use_ema=false"]
    tokenize = registry.build("text_encoder", "tiny_t5", base.components["text_encoder"]).tokenize
    import osctl.train.lora as lora

    add_adapter = lora.add_adapter

    def seeded(*args, **kwargs):  # the normal build's random init draws first: give both runs one adapter init
        torch.manual_seed(0)
        return add_adapter(*args, **kwargs)

    monkeypatch.setattr(lora, "add_adapter", seeded)
    materialise, cast = lean_load.materialise, []

    def spy(*args, storage=None, **kwargs):
        cast.append(dict(storage or {}))
        return materialise(*args, storage=storage, **kwargs)

    monkeypatch.setattr(lean_load, "materialise", spy)
    runs = {}
    for way in ("lean", "float32 then cast"):
        with monkeypatch.context() as patch:
            if way != "lean":
                patch.setattr(lean_load, "plan_lean_load", lambda *a, **k: None)
            checked = check_recipe(load_recipe(recipe, [*sets, f"train.output_dir={tmp_path / way}"]), registry)
            torch.manual_seed(5)
            parts = setup_training(checked, registry, TrainOptions(data_source=SyntheticClips(tokenize)))
            runs[way] = (parts, train(parts))
    (lean, lean_run), (plain, plain_run) = runs["lean"], runs["float32 then cast"]
    assert len(cast) == 1 and cast[0] and set(cast[0].values()) == {STORAGE_DTYPES[base_dtype]}  # lean run only
    assert lean.adapter.base_fingerprint == plain.adapter.base_fingerprint
    layers = dict(block_linears(lean.strategy.module))
    assert layers and all(layer.weight.dtype == STORAGE_DTYPES[base_dtype] for layer in layers.values())
    for name, layer in block_linears(plain.strategy.module):
        assert torch.equal(layers[name].weight.float(), layer.weight.float()), name
    adapters = {k: v for k, v in lean.strategy.module.state_dict().items() if "lora_" in k}
    assert adapters and all(v.dtype == torch.float32 for v in adapters.values())
    assert lean_run.losses == plain_run.losses


def test_file_heads_are_the_first_values_of_each_tensor(tmp_path):
    """``safetensors_heads`` reads only the leading rows each tensor needs: its first values flattened, for any rank
    of tensor, fewer when the tensor is smaller, in the file's dtype."""
    from osctl.train.weights import safetensors_heads

    tensors = {"matrix": torch.randn(40, 7), "row": torch.randn(5), "scalar": torch.tensor(3.5),
               "half": torch.randn(3, 4, 5).to(torch.bfloat16), "empty": torch.zeros(0, 3)}
    save_file(tensors, tmp_path / "w.safetensors")
    heads = safetensors_heads(tmp_path / "w.safetensors", tensors, 16)
    for name, tensor in tensors.items():
        assert torch.equal(heads[name], tensor.reshape(-1)[:16]) and heads[name].dtype == tensor.dtype, name


def test_an_adapter_added_to_an_empty_base_is_real_float32_and_alone_trainable(tmp_path):
    """A LoRA base sharded before it is read (fsdp) gets its adapter while its weights are on the meta device: the
    adapter is made on the CPU in float32 with the init a loaded base gives it, the base stays empty and frozen,
    and its fingerprint, read from the files' heads, is the loaded base's."""
    from osctl.train.frozen_base import float32_placeholders
    from osctl.train.lean_load import file_heads, parameters_on_meta, plan_lean_load
    from osctl.train.lora import AdapterSpec, add_adapter, base_fingerprint

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q = torch.nn.Linear(8, 8)
            self.ff = torch.nn.Linear(8, 16)

    def build():
        model = torch.nn.Sequential(Block(), Block())
        model._no_split_modules = ["Block"]
        return model

    torch.manual_seed(1)
    save_file({k: v.contiguous() for k, v in build().state_dict().items()}, tmp_path / "w.safetensors")
    spec = AdapterSpec(rank=2, alpha=2.0, target_modules=["to_q", "ff"], init="random")
    loaded = build()
    load_into(loaded, tmp_path / "w.safetensors")
    expected = base_fingerprint(loaded.state_dict())
    torch.manual_seed(4)
    add_adapter(loaded, spec)

    with parameters_on_meta():
        empty = build()
    plan = plan_lean_load(empty, [(tmp_path / "w.safetensors", "")], source="w")
    assert base_fingerprint(empty.state_dict(), heads=file_heads(plan)) == expected
    assert base_fingerprint(empty.state_dict()) != expected  # without the heads: names and shapes alone
    torch.manual_seed(4)
    with float32_placeholders(empty):
        add_adapter(empty, spec)
    reference = dict(loaded.named_parameters())
    for name, param in empty.named_parameters():
        if ".lora_" in name:
            assert param.requires_grad and param.device.type == "cpu" and param.dtype == torch.float32, name
            assert torch.equal(param, reference[name]), name
        else:
            assert param.is_meta and not param.requires_grad, name
