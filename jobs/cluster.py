"""What the SLURM cluster offers, and whether a request fits it, asked before anything is submitted.

``fit(res, what, name)`` reads the partitions and nodes (``scontrol show partition/node -o``) and,
when accounting answers, the accounts and QOS (``sacctmgr``). A value the user asked for
(``res.asked``) that no node or limit can meet is refused with one line naming the limit and the
setting that fixes it; a default of ours is lowered to what the partition offers instead, with a
note. sbatch would otherwise refuse the job ("Memory specification can not be satisfied") or, for a
node count or time limit, leave it pending for ever. Where there is no scontrol (``--dry-run`` on a
laptop) nothing is checked.
"""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass, replace
from typing import Callable, Optional

from jobs.slurm import sacctmgr, scontrol_show
from pipeline.errors import UserError

_KV = re.compile(r"(\w+)=(\S*)")


def minutes(text: str) -> Optional[float]:
    """A SLURM time limit ("UNLIMITED", "30", "30:00", "2:00:00", "1-12", "1-00:00:00") in minutes;
    None for no limit."""
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if days:  # days-hours[:minutes[:seconds]]
        parts += [0] * (3 - len(parts))
        h, m, s = parts
        return int(days) * 1440 + h * 60 + m + s / 60
    if len(parts) == 3:
        return parts[0] * 60 + parts[1] + parts[2] / 60
    if len(parts) == 2:  # minutes:seconds
        return parts[0] + parts[1] / 60
    return float(parts[0])


def _limit(v: str) -> Optional[int]:
    return int(v) if v.isdigit() else None  # "UNLIMITED", "0" handled by callers


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: int


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    up: bool
    max_time_min: Optional[float]
    max_nodes: Optional[int]
    max_cpus_per_node: Optional[int]
    max_mem_per_node_mb: Optional[int]
    nodes: tuple[Node, ...]


def _gpus(gres: str) -> int:
    """GPUs in a node's Gres ("gpu:4", "gpu:a100:4(S:0-1)", "gpu:2,shard:8")."""
    n = 0
    for item in gres.split(","):
        m = re.match(r"gpu(?::[^:(]+)?:(\d+)", item)
        n += int(m[1]) if m else 0
    return n


@functools.lru_cache(maxsize=None)
def partitions() -> Optional[dict[str, Partition]]:
    """Every partition with its nodes; None where scontrol does not answer."""
    ptext, ntext = scontrol_show("partition"), scontrol_show("node")
    return None if ptext is None or ntext is None else parse(ptext, ntext)


def parse(ptext: str, ntext: str) -> dict[str, Partition]:
    """`scontrol show partition -o` and `scontrol show node -o` -> partitions with their nodes."""
    nodes: dict[str, list[Node]] = {}
    for line in ntext.splitlines():
        kv = dict(_KV.findall(line))
        if "NodeName" not in kv:
            continue
        node = Node(kv["NodeName"], int(kv.get("CPUEfctv") or kv.get("CPUTot") or 0),
                    int(kv.get("RealMemory") or 0), _gpus(kv.get("Gres", "")))
        for p in kv.get("Partitions", "").split(","):
            nodes.setdefault(p, []).append(node)
    out = {}
    for line in ptext.splitlines():
        kv = dict(_KV.findall(line))
        if "PartitionName" not in kv:
            continue
        mem = _limit(kv.get("MaxMemPerNode", ""))
        out[kv["PartitionName"]] = Partition(
            kv["PartitionName"], kv.get("Default") == "YES", kv.get("State", "UP") == "UP",
            minutes(kv.get("MaxTime", "UNLIMITED")), _limit(kv.get("MaxNodes", "")),
            _limit(kv.get("MaxCPUsPerNode", "")), mem or None, tuple(nodes.get(kv["PartitionName"], ())))
    return out


@functools.lru_cache(maxsize=None)
def accounting(what: str) -> Optional[set[str]]:
    """Names of the accounts ("account") or QOS ("qos") the accounting database holds; None
    where there is no accounting to ask (the check is then sbatch's)."""
    text = sacctmgr("-n", "-P", "show", what, "format=" + ("account" if what == "account" else "name"))
    return None if text is None else {line.strip() for line in text.splitlines() if line.strip()}


def spec_names(stage: str) -> Callable[[str], str]:
    """How an experiment spec spells a resource: resources.<stage>.<field>."""
    return lambda field: f"resources.{stage}.{field}"


def flag_names(field: str) -> str:
    """How the command line spells a resource: --mem-gb for mem_gb."""
    return "--" + field.replace("_", "-")


def _gb(mb: float) -> str:
    return f"{int(mb / 1024 * 10) / 10:g}"  # rounded down: the value given back must fit


def fit(res, what: str, name: Callable[[str], str] = flag_names, cluster: Optional[dict] = None):
    """``res`` checked against the cluster: asked-for values that cannot be met raise a one-line
    UserError, our defaults are lowered to the partition's limits. Returns the Resources to submit."""
    parts = partitions() if cluster is None else cluster
    if parts is None:  # no SLURM here to ask: sbatch decides
        return res
    asked = set(res.asked)
    if res.partition:
        if res.partition not in parts:
            raise UserError(f"{what}: no partition {res.partition!r} on this cluster (it has "
                            f"{', '.join(sorted(parts)) or 'none'}); pass {name('partition')} with one of them")
        part = parts[res.partition]
    else:
        default = [p for p in parts.values() if p.default]
        if not default:
            raise UserError(f"{what}: this cluster has no default partition; pass {name('partition')} "
                            f"({', '.join(sorted(parts))})")
        part = default[0]
    where = f"partition {part.name}"
    if not part.up:
        raise UserError(f"{what}: {where} is not up; pass another {name('partition')}")
    for key in ("account", "qos"):
        value = getattr(res, key)
        known = accounting(key) if value and cluster is None else None
        if known is not None and value not in known:
            raise UserError(f"{what}: no {key} {value!r} in the accounting database ({', '.join(sorted(known))}); "
                            f"pass {name(key)} with one of them")
    if not part.nodes:
        raise UserError(f"{what}: {where} has no nodes; pass another {name('partition')}")
    notes = []

    def cap(field: str, value, limit, unit: str, text: str):
        """The value if it fits; a default is lowered to the limit, an asked value refused."""
        if limit is None or value is None or value <= limit:
            return value
        if field in asked:
            raise UserError(f"{what}: {name(field)} {value:g}{unit}, but {text}; pass {name(field)} "
                            f"{limit:g} or less")
        notes.append(f"{name(field)} {limit:g} ({text}; our default is {value:g})")
        return limit

    tasks = res.tasks_per_node
    per = "per task" if tasks == 1 else f"per node ({tasks} tasks)"
    mem_mb = max(n.mem_mb for n in part.nodes)
    if part.max_mem_per_node_mb:
        mem_mb = min(mem_mb, part.max_mem_per_node_mb)
    mem = cap("mem_gb", res.mem_gb, float(_gb(mem_mb)), f" {per}",
              f"the largest node in {where} has {_gb(mem_mb)} GB")
    cpus = max(n.cpus for n in part.nodes)
    if part.max_cpus_per_node:
        cpus = min(cpus, part.max_cpus_per_node)
    if tasks > cpus:
        raise UserError(f"{what}: {name('tasks_per_node')} {tasks}, but the nodes in {where} have at most "
                        f"{cpus} CPUs; pass {name('tasks_per_node')} {cpus} or less")
    cpt = cap("cpus_per_task", res.cpus_per_task, cpus // tasks, "",
              f"the largest node in {where} has {cpus} CPUs" + (f" for {tasks} tasks" if tasks > 1 else ""))
    gpus = max(n.gpus for n in part.nodes)
    if res.gpus_per_node > gpus:
        raise UserError(f"{what}: {name('gpus_per_node')} {res.gpus_per_node}, but "
                        + (f"the nodes in {where} have at most {gpus} GPUs; pass {name('gpus_per_node')} {gpus} "
                           "or less" if gpus else f"{where} has no GPUs; pass {name('gpus_per_node')} 0 or a "
                                                  f"{name('partition')} with GPUs"))
    # Nodes that can hold one node's share of the job.
    able = [n for n in part.nodes if n.cpus >= tasks * cpt and n.gpus >= res.gpus_per_node
            and (mem is None or n.mem_mb >= mem * 1024)]
    most = min(len(able), part.max_nodes or len(able))
    if res.nodes > most:
        raise UserError(f"{what}: {name('nodes')} {res.nodes}, but {where} has {most} node(s) that can hold "
                        f"{tasks} task(s) of {cpt} CPU(s)" + (f" and {res.gpus_per_node} GPU(s)" if res.gpus_per_node
                                                              else "") + f"; pass {name('nodes')} {most} or less")
    limit = part.max_time_min
    timeout = cap("timeout_min", res.timeout_min, int(limit) if limit is not None else None, " min",
                  f"{where} allows at most {limit:g} min" if limit is not None else "")
    if notes:
        print(f"{what}: on {where}: " + "; ".join(notes), file=sys.stderr)
    return replace(res, mem_gb=mem, cpus_per_task=cpt, timeout_min=timeout)
