"""The submission layer's pure parts: how tasks are split into arrays the cluster accepts.
The real submissions are in test_slurm.py."""

import pytest

from jobs.executor import ArrayPart, _ended_state, array_parts
from jobs.slurm import task_ids as _task_ids


def running_at_most(parts: list[ArrayPart]) -> int:
    """The most tasks that can run at once: lanes run side by side, parts within a lane in turn."""
    lanes: dict[int, int] = {}
    for j, p in enumerate(parts):
        root = j
        while parts[root].after is not None:
            root = parts[root].after
        lanes[root] = max(lanes.get(root, 0), min(p.throttle, p.stop - p.start))
    return sum(lanes.values())


@pytest.mark.parametrize("n,max_size,par", [(5, 8, 64), (8, 8, 2), (19, 8, 2), (19, 8, 3), (50, 8, 64),
                                            (100_000, 1001, 32), (3, None, 1), (17, 8, 1)])
def test_parts_cover_every_task_once_within_max_array_size_and_the_throttle(n, max_size, par):
    parts = array_parts(n, max_size, par)
    assert [i for p in parts for i in range(p.start, p.stop)] == list(range(n))
    assert all(p.stop - p.start <= (max_size or n) for p in parts)  # indices 0..MaxArraySize-1
    assert all(p.after is None or p.after < j for j, p in enumerate(parts))  # waits only on earlier ones
    assert running_at_most(parts) <= par
    if n <= (max_size or n):
        assert parts == [ArrayPart(0, n, par, None)]  # fits: one array, as before


def test_split_shares_the_throttle_and_chains_when_arrays_outnumber_it():
    assert array_parts(19, 8, 2) == [ArrayPart(0, 8, 1, None), ArrayPart(8, 16, 1, None), ArrayPart(16, 19, 1, 0)]
    assert array_parts(19, 8, 64) == [ArrayPart(0, 8, 22, None), ArrayPart(8, 16, 21, None),
                                      ArrayPart(16, 19, 21, None)]


def test_sacct_rows_map_to_array_tasks():
    assert _task_ids("7_3") == ["7_3"] and _task_ids("7") == ["7"]
    assert _task_ids("7_[4-5%6]") == ["7_4", "7_5"] and _task_ids("7_[1,3-4]") == ["7_1", "7_3", "7_4"]


def test_a_task_without_a_row_takes_the_bare_array_rows_end():
    """SLURM 22.05 sometimes lists a cancelled array's still-pending tasks only as "403" (seen
    in bench/slurm_wait.py, where submitit's wait then never returned for them)."""
    states = {"403_0": "CANCELLED", "403_3": "RUNNING", "403": "CANCELLED", "9_0": "PENDING"}
    assert _ended_state(states, "403_4") == "CANCELLED" and _ended_state(states, "403_0") == "CANCELLED"
    assert _ended_state(states, "403_3") == "" and _ended_state(states, "9_1") == ""  # not over / unknown
