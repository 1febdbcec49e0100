"""The one distributed helper: who am I, and how do ranks agree.

``init()`` reads submitit's job environment first (SLURM or local executor
tasks), then torchrun's variables, else runs as a single process; it picks
``nccl`` on CUDA and ``gloo`` on CPU. Under SLURM the rendezvous is the first
host of the job's node list, on a port derived from the job id; a job whose
node list can't be read stops with a clear error instead of waiting for ever. Gradients are averaged by hand with one
flattened all-reduce (as StyleGAN does) rather than through DDP, because GAN
steps run several forwards and a double backward (the gradient penalty)
before each optimizer step.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import submitit
import torch
import torch.distributed as tdist
from submitit.core.job_environment import JobEnvironment

from .errors import UserError


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


class RendezvousError(RuntimeError):
    """The ranks of a job can't know where to meet."""


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list -> host names in order, as `scontrol show hostnames`
    prints them: "n[1-2],gpu[08-10]" -> n1 n2 gpu08 gpu09 gpu10 (zero padding kept)."""
    groups, depth, cur = [], 0, ""
    for ch in nodelist.strip():  # split on the commas outside brackets
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth not in (0, 1):
            raise ValueError(f"unbalanced brackets in node list {nodelist!r}")
        if ch == "," and depth == 0:
            groups.append(cur)
            cur = ""
        else:
            cur += ch
    if depth or not (groups or cur):
        raise ValueError(f"can't read node list {nodelist!r}")
    return [host for group in groups + [cur] for host in _expand_group(group, nodelist)]


def _expand_group(group: str, whole: str) -> list[str]:
    m = re.fullmatch(r"([^\[\],]*)\[([^\[\]]+)\](.*)", group)
    if not m:
        if not group or "[" in group or "]" in group:
            raise ValueError(f"can't read node list {whole!r}")
        return [group]
    head, ranges, tail = m.groups()
    out = []
    for part in ranges.split(","):
        lo, dash, hi = part.partition("-")
        hi = hi if dash else lo
        if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
            raise ValueError(f"bad range {part!r} in node list {whole!r}")
        for k in range(int(lo), int(hi) + 1):
            out += [f"{head}{k:0{len(lo)}d}{rest}" for rest in _expand_group(tail, whole)] if tail else \
                [f"{head}{k:0{len(lo)}d}"]
    return out


def master_port(job_id) -> int:
    """20000-29999 from the (numeric) job id: every rank computes the same port without
    talking, jobs sharing a node rarely collide, and it stays below Linux's ephemeral range
    (32768-60999 by default), where an outgoing connection could already hold it."""
    return 20000 + int(job_id) % 10000


def slurm_master_addr(env=os.environ) -> str:
    """The first host of the job's node list: where rank 0 runs (the batch step's node)."""
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    if not nodelist.strip():
        raise RendezvousError(
            f"SLURM job {env.get('SLURM_JOB_ID', '?')} has {env.get('SLURM_NTASKS', '?')} tasks but no "
            "SLURM_JOB_NODELIST, so the ranks can't know where rank 0 listens. Not falling back to "
            "localhost: ranks on other nodes would wait for it for ever. Launch the tasks with srun "
            "inside the allocation (submitit does), or set MASTER_ADDR and run under torchrun.")
    try:
        return expand_nodelist(nodelist)[0]
    except ValueError as e:
        raise RendezvousError(f"SLURM job {env.get('SLURM_JOB_ID', '?')}: {e}") from None


def _submitit_env() -> dict | None:
    try:
        job = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job
        return None
    if job.num_tasks <= 1:
        return {"rank": 0, "world": 1, "local_rank": 0}
    # Set, not setdefault: sbatch copies the submitting shell's environment into the job,
    # so a MASTER_ADDR found here may well name some other machine. SLURM_JOB_ID, not
    # submitit's "ARRAY_TASK" id: each array task (a sweep point) gets its own port.
    if job.name() == "slurm":
        os.environ["MASTER_ADDR"] = slurm_master_addr()
        os.environ["MASTER_PORT"] = str(master_port(os.environ["SLURM_JOB_ID"]))
    else:  # submitit's local executor: every task on this machine
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(master_port(job.job_id))
    return {"rank": job.global_rank, "world": job.num_tasks, "local_rank": job.local_rank}


def _threads_per_rank(env) -> int | None:
    """Torch threads for this rank, or None to keep torch's default (one per core).

    torch starts a thread per core of the node, not per CPU the job was given: ranks sharing
    a node oversubscribe it. The two-rank test job on this 2-core host had steps of 12-16 s
    between ones of 0.4 s; with a thread per given CPU, none above 0.53 s. Ranks of a local
    job (submitit's local executor, torchrun) split this machine's cores between them.
    OMP_NUM_THREADS, where set, wins."""
    if "OMP_NUM_THREADS" in env:
        return None
    if env.get("SLURM_CPUS_PER_TASK"):
        return max(1, int(env["SLURM_CPUS_PER_TASK"]))
    local = _local_ranks(env)
    return max(1, len(os.sched_getaffinity(0)) // local) if local > 1 else None


def _local_ranks(env) -> int:
    """Ranks of this job on this machine, where a local launcher says (submitit's local
    executor, torchrun); 1 elsewhere."""
    return int(env.get("SUBMITIT_LOCAL_NTASKS") or env.get("LOCAL_WORLD_SIZE") or 1)


def init(device: str = "auto") -> Env:
    global _ENV
    spec = _submitit_env()
    if spec is None and "WORLD_SIZE" in os.environ:  # torchrun
        spec = {"rank": int(os.environ["RANK"]), "world": int(os.environ["WORLD_SIZE"]),
                "local_rank": int(os.environ.get("LOCAL_RANK", 0))}
    spec = spec or {"rank": 0, "world": 1, "local_rank": 0}
    threads = _threads_per_rank(os.environ)
    if threads:
        torch.set_num_threads(threads)
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


def native_bf16(device: str) -> bool:
    """Whether bf16 autocast pays here: on CUDA, or on a CPU with bf16 in hardware (AMX or
    AVX512-BF16; a 2-core AMX machine's step is 1.39x faster, docs/quality.md, session 16).
    Elsewhere oneDNN emulates bf16, slower than fp32, so the run stays fp32."""
    if device.startswith("cuda"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to tell, so fp32
        return False
    return re.search(r"\b(amx_bf16|avx512_bf16)\b", flags) is not None


def preempt_signal() -> signal.Signals:
    """The preemption signal: submitit's (USR2 since NCCL swallowed USR1, NVIDIA/nccl#704), or
    SUBMITIT_PREEMPT_SIGNAL. submitit writes the same value into sbatch --signal, and the job
    inherits the variable, so the scheduler and this handler always agree."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", JobEnvironment.USR_SIG).upper().removeprefix("SIG")
    try:
        return signal.Signals["SIG" + name]
    except KeyError:
        raise UserError(f"SUBMITIT_PREEMPT_SIGNAL={name!r} is not a signal name (e.g. USR2)") from None


def job_tags() -> dict:
    """Where this process runs, for the MLflow run's tags ("" outside SLURM)."""
    return {"slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
            "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID", ""),
            "slurm_nodelist": os.environ.get("SLURM_JOB_NODELIST", "")}


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
    """Keep BatchNorm running statistics (and spectral norm's power-iteration vectors) the
    same on every rank, with one flat all-reduce: a call per buffer was dozens of round
    trips per step."""
    if _ENV.world == 1:
        return
    bufs = [b for b in module.buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = torch.cat([b.flatten() for b in bufs])
    tdist.all_reduce(flat)
    flat /= _ENV.world
    for b, v in zip(bufs, flat.split([b.numel() for b in bufs])):
        b.copy_(v.view_as(b))


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


@contextlib.contextmanager
def alone_on_this_machine():
    """Rank 0's work while the other ranks wait for it (an evaluation): where all ranks of the
    job run on this machine and split its cores, rank 0 takes them all meanwhile."""
    share = torch.get_num_threads()
    if _ENV.world > 1 and _local_ranks(os.environ) == _ENV.world and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    try:
        yield
    finally:
        torch.set_num_threads(share)


def barrier() -> None:
    if _ENV.world > 1:
        tdist.barrier()
