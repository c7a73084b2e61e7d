"""Ulysses sequence parallelism: the tiny Skiparse model on 2 gloo processes equals one process.

The parent computes the single-process reference; two workers (this file run as a script) each hold
a contiguous slice of the latent frames and of the text tokens, run forward + backward with the
model's sequence-parallel hook, and write their output slice and parameter gradients to files.
Outputs concatenated along T must equal the reference output and gradients summed over the ranks
must equal the reference gradients.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

WORLD = 2
TIMEOUT_S = 180

# name -> (model overrides of the tiny preset, latent T x H x W, text length, latent mask?, text mask?)
CASES: dict[str, dict[str, Any]] = {
    # T=3 splits 2/1, text 7 splits 4/3, 60 tokens (Skiparse k=4 pads to 64), latent mask given per rank
    "uneven_k4": {"overrides": {}, "thw": (3, 8, 10), "text": 7, "latent_mask": "local", "text_mask": "full"},
    # T=4 splits 2/2, text 8 splits 4/4, k=2 on custom blocks, full latent mask, per-rank text mask
    "even_k2": {"overrides": {"sparse_n": 2, "sparse_blocks": [0, 1, 3]}, "thw": (4, 6, 6), "text": 8,
                "latent_mask": "full", "text_mask": "local"},
    # the uneven case again with per-block gradient checkpointing (collectives re-run in backward)
    "uneven_k4_checkpointed": {"overrides": {}, "thw": (3, 8, 10), "text": 7, "latent_mask": "local",
                               "text_mask": "full", "checkpointing": True},
    # the learned absolute position table: each rank must add the vectors of its own frames (2/1 split)
    "uneven_k4_abs_pos": {"overrides": {"abs_pos_embed": "learned", "abs_pos_max_size": [3, 4, 5]}, "thw": (3, 8, 10),
                          "text": 7, "latent_mask": "local", "text_mask": "full"},
    # the resampled table: frames are resampled over the whole clip, then each rank takes its own share
    "uneven_k4_abs_pos_interpolated": {"overrides": {"abs_pos_embed": "learned_interpolated",
                                                     "abs_pos_max_size": [2, 3, 3]}, "thw": (3, 8, 10), "text": 7,
                                       "latent_mask": "local", "text_mask": "full"},
    # RoPE off (positions from the resampled table alone)
    "uneven_k4_no_rope": {"overrides": {"abs_pos_embed": "learned_interpolated", "abs_pos_max_size": [2, 3, 3],
                                        "rope": False}, "thw": (3, 8, 10), "text": 7, "latent_mask": "local",
                          "text_mask": "full"},
}


def _build(overrides: dict[str, Any]) -> Any:
    from osctl_builtin.models.osp_v13.presets import preset_config
    from osctl_builtin.models.osp_v13.transformer import OpenSoraT2V_v1_3

    cfg = preset_config("tiny")
    cfg.update(overrides)
    torch.manual_seed(0)
    return OpenSoraT2V_v1_3(**cfg)


def _inputs(case: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Full (unsplit) inputs of a case, the same in every process."""
    gen = torch.Generator().manual_seed(7)
    t, h, w = case["thw"]
    n_text = case["text"]
    x = torch.randn(2, 8, t, h, w, generator=gen)
    text = torch.randn(2, 1, n_text, 32, generator=gen)
    latent_mask = torch.ones(2, t, h, w)
    latent_mask[0, -1, :, : w // 2] = 0  # part of the last frame of sample 0 is padding
    latent_mask[1, :, -2:, :] = 0
    text_mask = torch.ones(2, 1, n_text)
    text_mask[0, 0, n_text - 3:] = 0
    weight = torch.randn(2, 8, t, h, w, generator=gen)  # loss = sum(out * weight)
    return {"x": x, "text": text, "latent_mask": latent_mask, "text_mask": text_mask, "weight": weight,
            "timestep": torch.tensor([321.5, 17.0])}


def _reference(case: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = _build(case["overrides"])
    inp = _inputs(case)
    out = model(inp["x"], inp["timestep"], inp["text"], attention_mask=inp["latent_mask"],
                encoder_attention_mask=inp["text_mask"], return_dict=False)[0]
    (out * inp["weight"]).sum().backward()
    return out.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    """One sequence-parallel rank: run every case on this rank's slices and save output and grads."""
    import torch.distributed as dist

    from osctl.parallel import ulysses

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    group = dist.group.WORLD
    results: dict[str, torch.Tensor] = {}
    for name, case in CASES.items():
        model = _build(case["overrides"])
        model.set_sequence_parallel(group)
        if case.get("checkpointing"):
            model.enable_gradient_checkpointing()
            model.train()
        inp = _inputs(case)
        t_sizes = ulysses.shard_sizes(case["thw"][0], WORLD)
        l_sizes = ulysses.shard_sizes(case["text"], WORLD)

        def mine(x: torch.Tensor, dim: int, sizes: list[int]) -> torch.Tensor:
            return x.narrow(dim, sum(sizes[:rank]), sizes[rank])

        latent_mask = mine(inp["latent_mask"], 1, t_sizes) if case["latent_mask"] == "local" else inp["latent_mask"]
        text_mask = mine(inp["text_mask"], 2, l_sizes) if case["text_mask"] == "local" else inp["text_mask"]
        out = model(mine(inp["x"], 2, t_sizes), inp["timestep"], mine(inp["text"], 2, l_sizes),
                    attention_mask=latent_mask, encoder_attention_mask=text_mask, return_dict=False)[0]
        (out * mine(inp["weight"], 2, t_sizes)).sum().backward()
        results[f"{name}/out"] = out.detach()
        for n, p in model.named_parameters():
            results[f"{name}/grad/{n}"] = p.grad.detach()

    # the primitives on uneven sizes: gather then split is the identity, gradients included
    local = torch.arange(3.0 + rank).reshape(1, -1).repeat(2, 1).requires_grad_()
    full = ulysses.gather_along_dim(local, 1, group, sizes=[3, 4])
    back = ulysses.split_along_dim(full * (rank + 1), 1, group, sizes=[3, 4])
    back.sum().backward()
    results["prim/full"] = full.detach()
    results["prim/grad"] = local.grad.detach()
    try:
        ulysses.all_to_all(torch.zeros(2, 3), scatter_dim=1, gather_dim=0, group=group)
        results["prim/error"] = torch.tensor(0)
    except ValueError as exc:
        results["prim/error"] = torch.tensor(int("does not divide evenly over a group of 2 ranks" in str(exc)))

    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # gloo can abort at interpreter exit after the work is done; skip that teardown


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sequence_parallel_matches_single_process(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, __file__, str(rank), str(port), str(tmp_path)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(WORLD)
    ]
    torch.set_num_threads(1)
    references = {name: _reference(case) for name, case in CASES.items()}  # overlaps with the workers
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=TIMEOUT_S)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"sequence-parallel workers did not finish within {TIMEOUT_S} s")
    for rank, (proc, log) in enumerate(zip(procs, logs, strict=True)):
        assert proc.returncode == 0, f"rank {rank} failed (exit {proc.returncode}):\n{log[-4000:]}"
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    for name, (ref_out, ref_grads) in references.items():
        t_total = CASES[name]["thw"][0]
        got = torch.cat([r[f"{name}/out"] for r in ranks], dim=2)
        assert got.shape == ref_out.shape
        assert [r[f"{name}/out"].shape[2] for r in ranks] == [(t_total + 1) // 2, t_total // 2]
        torch.testing.assert_close(got, ref_out, atol=1e-5, rtol=1e-5, msg=f"{name}: output")
        for pname, ref in ref_grads.items():
            summed = sum(r[f"{name}/grad/{pname}"] for r in ranks)
            torch.testing.assert_close(summed, ref, atol=1e-5, rtol=1e-5, msg=f"{name}: grad of {pname}")

    expected_full = torch.cat([torch.arange(3.0), torch.arange(4.0)]).repeat(2, 1)
    for rank, r in enumerate(ranks):
        torch.testing.assert_close(r["prim/full"], expected_full)
        # split's backward gathers (1, 2) x ones over the full row; gather's backward sums rank slices
        torch.testing.assert_close(r["prim/grad"], torch.full((2, 3 + rank), 3.0))
        assert int(r["prim/error"]) == 1


def test_helpers_without_group_are_identity() -> None:
    from osctl.parallel import ulysses

    x = torch.randn(2, 3, 4)
    assert ulysses.all_to_all(x, 2, 1, None) is x
    assert ulysses.gather_along_dim(x, 1, None) is x
    assert ulysses.split_along_dim(x, 1, None) is x
    assert ulysses.group_size(None) == 1 and ulysses.group_rank(None) == 0
    assert ulysses.gather_sizes(5, None) == [5]
    assert ulysses.shard_sizes(7, 2) == [4, 3]
    assert ulysses.shard_sizes(4, 2) == [2, 2]
    with pytest.raises(ValueError, match="at least 1"):
        ulysses.shard_sizes(4, 0)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
