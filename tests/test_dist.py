"""Distributed start-up under SLURM: where rank 0 listens, on which port, and the error when
that can't be known. The real two-node path is `test_slurm.py::test_two_node_ddp_over_gloo`."""

import subprocess
import time
from pathlib import Path

import pytest

from pipeline import dist

FORMS = {
    "n1": ["n1"],
    "n[1-2]": ["n1", "n2"],
    "n1,n2": ["n1", "n2"],
    "gpu[08-10]": ["gpu08", "gpu09", "gpu10"],
    "n[1-2],login,gpu[01-02]": ["n1", "n2", "login", "gpu01", "gpu02"],
    "n[1,3-4]": ["n1", "n3", "n4"],
    "r[1-2]-n[3,5]": ["r1-n3", "r1-n5", "r2-n3", "r2-n5"],
    "a[9-11]": ["a9", "a10", "a11"],
}


@pytest.mark.parametrize("nodelist", FORMS)
def test_node_list_expands_like_scontrol(nodelist):
    assert dist.expand_nodelist(nodelist) == FORMS[nodelist]


@pytest.mark.slurm
def test_node_list_agrees_with_scontrol_show_hostnames(slurm):
    """The same forms through SLURM's own parser (scontrol needs the cluster's slurm.conf)."""
    for nodelist, want in FORMS.items():
        r = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == want == dist.expand_nodelist(nodelist)


@pytest.mark.parametrize("bad", ["", ",", "n[1-", "n[2-1]", "n[a]", "n]1[", "n[1-2"])
def test_unreadable_node_lists_are_refused(bad):
    with pytest.raises(ValueError, match="node list|range"):
        dist.expand_nodelist(bad)


def test_port_comes_from_the_job_id_below_the_ephemeral_range():
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])  # this kernel's
    ports = {dist.master_port(j) for j in range(1, 30001)}
    assert dist.master_port(123) == dist.master_port("123") == 20123  # every rank, no talking
    assert min(ports) == 20000 and max(ports) == 29999 < low


SLURM_JOB = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2",
             "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "0", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}


def test_rank_meets_rank_0_on_the_first_node(monkeypatch):
    """What init() hands torch inside a 2-task SLURM job (set here by hand: no process group is
    started, so nothing waits). sbatch copies the submitter's environment into the job, so a
    MASTER_ADDR already there is overridden."""
    for k, v in {**SLURM_JOB, "SLURM_JOB_NODELIST": "n[3-4]", "MASTER_ADDR": "submit-host"}.items():
        monkeypatch.setenv(k, v)
    assert dist._submitit_env() == {"rank": 1, "world": 2, "local_rank": 0}
    import os

    assert os.environ["MASTER_ADDR"] == "n3" and os.environ["MASTER_PORT"] == "24242"


@pytest.mark.parametrize("nodelist", [None, "", "n[1-"])
def test_no_node_list_fails_fast_with_a_clear_error(monkeypatch, nodelist):
    """pytorch#137402: without a node list, falling back to localhost makes the other nodes'
    ranks wait for a rendezvous that never comes. init() stops at once and says why."""
    for k, v in SLURM_JOB.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SLURM_NODELIST", raising=False)
    if nodelist is None:
        monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    else:
        monkeypatch.setenv("SLURM_JOB_NODELIST", nodelist)
    t0 = time.time()
    with pytest.raises(dist.RendezvousError, match="SLURM job 4242") as e:
        dist.init("cpu")
    assert time.time() - t0 < 5
    assert ("no SLURM_JOB_NODELIST" in str(e.value) and "localhost" in str(e.value)) if not nodelist \
        else "can't read node list 'n[1-'" in str(e.value)


def test_ranks_on_one_machine_split_its_cores_and_omp_num_threads_wins():
    """Each rank's torch threads: a SLURM task's CPUs; a local job's share of this machine's
    cores (two ranks with a thread per core each ran 4 threads on 2 cores); else torch's own."""
    import os

    cores = len(os.sched_getaffinity(0))
    assert dist._threads_per_rank({"SLURM_CPUS_PER_TASK": "3"}) == 3
    assert dist._threads_per_rank({"SUBMITIT_LOCAL_NTASKS": "2"}) == max(1, cores // 2)
    assert dist._threads_per_rank({"LOCAL_WORLD_SIZE": str(4 * cores)}) == 1
    assert dist._threads_per_rank({"SUBMITIT_LOCAL_NTASKS": "1"}) is None
    assert dist._threads_per_rank({}) is None
    assert dist._threads_per_rank({"OMP_NUM_THREADS": "1", "SLURM_CPUS_PER_TASK": "3"}) is None


def test_rank_0_takes_the_waiting_ranks_cores_while_it_evaluates_alone(monkeypatch):
    import os

    import torch

    cores, share = len(os.sched_getaffinity(0)), torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("SUBMITIT_LOCAL_NTASKS", "2")
    monkeypatch.setattr(dist, "_ENV", dist.Env(rank=0, world=2))
    with dist.alone_on_this_machine():
        assert torch.get_num_threads() == cores
    assert torch.get_num_threads() == share
    monkeypatch.setattr(dist, "_ENV", dist.Env(rank=0, world=4))  # ranks on other machines too: its share only
    with dist.alone_on_this_machine():
        assert torch.get_num_threads() == share
