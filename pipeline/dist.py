"""The one distributed helper: who am I, and how do ranks agree.

``init()`` reads submitit's job environment first (SLURM or local executor
tasks), then torchrun's variables, else runs as a single process; it picks
``nccl`` on CUDA and ``gloo`` on CPU. Gradients are averaged by hand with one
flattened all-reduce (as StyleGAN does) rather than through DDP, because GAN
steps run several forwards and a double backward (the gradient penalty)
before each optimizer step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Env:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


_ENV = Env()


def _submitit_env() -> dict | None:
    try:
        import submitit

        job = submitit.JobEnvironment()
    except (ImportError, RuntimeError):
        return None
    if job.num_tasks <= 1:
        return {"rank": 0, "world": 1, "local_rank": 0}
    d = submitit.helpers.TorchDistributedEnvironment()  # master address from the job's first host
    os.environ.setdefault("MASTER_ADDR", d.master_addr)
    os.environ.setdefault("MASTER_PORT", str(d.master_port))
    return {"rank": d.rank, "world": d.world_size, "local_rank": d.local_rank}


def init(device: str = "auto") -> Env:
    global _ENV
    spec = _submitit_env()
    if spec is None and "WORLD_SIZE" in os.environ:  # torchrun
        spec = {"rank": int(os.environ["RANK"]), "world": int(os.environ["WORLD_SIZE"]),
                "local_rank": int(os.environ.get("LOCAL_RANK", 0))}
    spec = spec or {"rank": 0, "world": 1, "local_rank": 0}
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(spec["local_rank"] % torch.cuda.device_count())
        device = f"cuda:{torch.cuda.current_device()}"
    if spec["world"] > 1 and not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.startswith("cuda") else "gloo", init_method="env://",
                                 rank=spec["rank"], world_size=spec["world"])
    _ENV = Env(spec["rank"], spec["world"], spec["local_rank"], device)
    return _ENV


def env() -> Env:
    return _ENV


def shutdown() -> None:
    if tdist.is_initialized():
        tdist.barrier()  # no rank tears gloo down while a peer is still talking to it
        tdist.destroy_process_group()


def average_grads(params) -> None:
    """Average .grad over ranks with one flat all-reduce."""
    if _ENV.world == 1:
        return
    params = [p for p in params if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    tdist.all_reduce(flat)
    flat /= _ENV.world
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p))


def average_buffers(module) -> None:
    """Keep BatchNorm running statistics the same on every rank."""
    if _ENV.world == 1:
        return
    for b in module.buffers():
        if b.is_floating_point():
            tdist.all_reduce(b)
            b /= _ENV.world


def any_rank(flag: bool) -> bool:
    """True on every rank if it is True on any (e.g. a preemption signal seen by one)."""
    if _ENV.world == 1:
        return flag
    t = torch.tensor([int(flag)], device=_ENV.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def max_rank(value: int) -> int:
    """The largest value over all ranks (e.g. the strongest stop request any rank got)."""
    if _ENV.world == 1:
        return value
    t = torch.tensor([value], device=_ENV.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return int(t.item())


def gather_objects(obj) -> list:
    if _ENV.world == 1:
        return [obj]
    out = [None] * _ENV.world
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    if _ENV.world == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if _ENV.world > 1:
        tdist.barrier()
