"""Job arrays and job-id expressions, for the daemon's service (pure except the store reads).

``gpuq submit --array 0-99%8 train.py --seed {}`` is one request: the daemon expands it into
100 jobs with consecutive ids; the first id names the array (as in Slurm).  Each job gets its
index as ``GPUQ_ARRAY_INDEX`` and in place of ``{}`` in its arguments, and at most 8 run at once.
``gpuq submit --from FILE`` is the same with one command per line (element i runs line i).

Commands that take job ids also take an array id (all of its jobs) and ``ARRAY_INDEX``
(one element: ``17_3``).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

from gpuq.errors import InvalidInput
from gpuq.jobs.model import ArrayMember, Job

MAX_ARRAY_JOBS = 10_000
_RANGE = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")
PLACEHOLDER = "{}"


def parse_array(text: str, commands: int | None = None) -> tuple[list[int], int | None]:
    """``0-99%8`` -> (indices 0..99, limit 8).  Also ``1,3,5``, ``0-20:2`` (step) and, for
    ``--from FILE`` with ``commands`` lines, just ``%4`` (the lines' indices, limit 4)."""
    body, _, limit_txt = str(text).strip().partition("%")
    limit: int | None = None
    if limit_txt:
        if not limit_txt.isdigit() or int(limit_txt) < 1:
            raise InvalidInput(f"--array {text!r}: after % give how many may run at once, like 0-99%8.")
        limit = int(limit_txt)
    if not body:
        if commands is None:
            raise InvalidInput(f"--array {text!r} has no indices: write it like 0-99 or 0-99%8.")
        return list(range(commands)), limit
    indices: list[int] = []
    for part in body.split(","):
        m = _RANGE.match(part.strip())
        if not m:
            raise InvalidInput(f"--array {text!r} is not an index list: write it like 0-99, 1,3,5, 0-20:2 or 0-99%8.")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        step = int(m.group(3) or 1)
        if hi < lo or step < 1:
            raise InvalidInput(f"--array {text!r}: a range goes from low to high, like 0-99.")
        if (hi - lo) // step + 1 + len(indices) > MAX_ARRAY_JOBS:
            raise InvalidInput(f"--array {text!r} has more than {MAX_ARRAY_JOBS} jobs: split it.")
        indices.extend(range(lo, hi + 1, step))
    if len(set(indices)) != len(indices):
        raise InvalidInput(f"--array {text!r} names an index twice: give each index once.")
    if commands is not None and any(i >= commands for i in indices):
        raise InvalidInput(f"--array {text!r} names an index past the last of the {commands} commands "
                           "(the first line is index 0).")
    return indices, limit


def substitute(argv: Sequence[str], index: int) -> list[str]:
    """``{}`` in any argument becomes the element's index."""
    return [a.replace(PLACEHOLDER, str(index)) for a in argv]


def members(first: Job) -> list[int]:
    """The ids of all jobs of the array that ``first`` names."""
    a = first.spec.array
    assert a is not None
    return list(range(a.array_id, a.array_id + a.size))


def is_array_id(job: Job) -> bool:
    return job.spec.array is not None and job.spec.array.array_id == job.id


def member_ref(array_id: int, index: int, size: int, limit: int | None) -> ArrayMember:
    return ArrayMember(array_id=array_id, index=index, size=size, limit=limit)


def expand_ids(raw: Sequence[Any], get: Callable[[int], Job], get_many: Callable[[list[int]], list[Job]],
               what: str) -> list[int]:
    """Job ids from a request: ``17`` (a job, or every job of array 17) or ``17_3`` (element 3
    of array 17).  ``get`` reads one job (raising JobNotFound), ``get_many`` several."""
    out: list[int] = []
    for item in raw:
        text = str(item).strip()
        arr, sep, idx = text.partition("_")
        if not arr.isdigit() or (sep and not idx.isdigit()):
            raise InvalidInput(f"{what}: {text!r} is not a job id: give 17, or 17_3 for element 3 of array 17.")
        job = get(int(arr))
        if not sep:
            out.extend(members(job) if is_array_id(job) else [job.id])
            continue
        if not is_array_id(job):
            raise InvalidInput(f"{what}: job {arr} is not an array, so it has no element {idx}.")
        found = [j.id for j in get_many(members(job)) if j.spec.array is not None and j.spec.array.index == int(idx)]
        if not found:
            raise InvalidInput(f"array {arr} has no element {idx}; `gpuq status {arr}` lists its elements.")
        out.append(found[0])
    return list(dict.fromkeys(out))

