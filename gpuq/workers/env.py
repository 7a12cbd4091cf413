"""The environment a job's process gets (pure: builds a dict, never touches os.environ).

The contract with training scripts (and with ``gpuq.jobs.tf``):

=============================  ===============================================================
``CUDA_DEVICE_ORDER``          ``PCI_BUS_ID`` so CUDA numbers GPUs as NVML does
``CUDA_VISIBLE_DEVICES``       the placed GPUs' UUIDs, comma-separated ("" for ``--gpus 0``)
``TF_FORCE_GPU_ALLOW_GROWTH``  ``true``: TensorFlow does not grab the whole GPU
``GPUQ_GPU_MEM_MIB``           the job's memory share per GPU in MiB (absent: whole GPU)
``GPUQ_GPU_MEM_FRACTION``      the same share as a fraction of the GPU (absent: whole GPU)
``XLA_PYTHON_CLIENT_*``        JAX: no preallocation, and the share as MEM_FRACTION
``PYTORCH_ALLOC_CONF``         ``per_process_memory_fraction:F`` (PyTorch)
``GPUQ_JOB_ID``                the job's id
``GPUQ_CHECKPOINT_DIR``        a per-job directory that survives requeues
``GPUQ_PROGRESS_FILE``         where the runtime writes progress JSON for ``gpuq status``
``GPUQ_REQUEUE_EXIT_CODE``     the exit status meaning "checkpointed, requeue me" (75)
``GPUQ_RESTART_COUNT``         how many times the job was requeued before this run
``GPUQ_ARRAY_ID``              array jobs only: the array's id (its first job's id)
``GPUQ_ARRAY_INDEX``           array jobs only: this job's index in the array (``--array 0-99``)
``GPUQ_SIMULATED_GPU_DIR``     only on simulated GPUs: where a process declares memory it "uses"
=============================  ===============================================================

A job across nodes (``--nodes N``) runs one process per node, each with its own node's GPUs in
``CUDA_VISIBLE_DEVICES``, and the distributed environment of both frameworks:

=============================  ===============================================================
``TF_CONFIG``                  ``{"cluster": {"worker": ["addr0:port+1", ...]}, "task":
                               {"type": "worker", "index": RANK}}`` (MultiWorkerMirroredStrategy)
``MASTER_ADDR``                rank 0's node address (``[daemon] address``)
``MASTER_PORT``                a port chosen for this run (the TF workers use the next N)
``WORLD_SIZE`` / ``RANK``      N / this part's rank (0 .. N-1), one process per node
``LOCAL_RANK``                 0 (for one process per GPU, run torchrun with ``--nnodes``,
                               ``--node_rank $GPUQ_NODE_RANK`` and the same master)
``GPUQ_NODE_RANK``             this part's rank; ``GPUQ_NUM_NODES``: N
=============================  ===============================================================
"""

from __future__ import annotations

import json

from gpuq.jobs.model import REQUEUE_EXIT_CODE, Job, Placement

#: Variables from the submitting shell that are never passed on: they describe the
#: submitting terminal or would override what gpuq decides for the job.
DROPPED_VARS = frozenset({
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "TF_FORCE_GPU_ALLOW_GROWTH", "PYTORCH_ALLOC_CONF",
    "PYTORCH_CUDA_ALLOC_CONF", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "GPUQ_GPU_MEM_MIB", "GPUQ_GPU_MEM_FRACTION", "GPUQ_JOB_ID", "GPUQ_CHECKPOINT_DIR", "GPUQ_PROGRESS_FILE",
    "GPUQ_SIMULATED_GPU_DIR", "GPUQ_RESTART_COUNT", "GPUQ_REQUEUE_EXIT_CODE", "GPUQ_ARRAY_ID", "GPUQ_ARRAY_INDEX",
    "GPUQ_NODE_RANK", "GPUQ_NUM_NODES",
    "TERM_SESSION_ID", "SSH_AUTH_SOCK", "SSH_AGENT_PID", "WINDOWID", "DISPLAY", "XAUTHORITY",
})


def build_job_env(
    job: Job,
    checkpoint_dir: str,
    progress_file: str,
    simulated_gpu_dir: str | None = None,
    node: str = "",
) -> dict[str, str]:
    """The full environment for ``job``'s process on its placement (for a job across nodes: the
    process of its part on ``node``)."""
    env: dict[str, str] = {k: v for k, v in job.spec.env.items() if k not in DROPPED_VARS}
    p = job.placement
    if p is not None and p.is_gang:
        rank = p.rank_of(node)
        if rank is None:
            raise ValueError(f"job {job.id} has no part on node {node}")
        env.update(distributed_env(p, rank))
        p = p.part(rank)
    uuids = p.gpu_uuids if p is not None else ()
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["CUDA_VISIBLE_DEVICES"] = ",".join(uuids)
    env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    limits = [m for m in (p.limit_mib if p is not None else ()) if m is not None]
    if p is not None and uuids and limits and len(limits) == len(uuids):
        mib = min(limits)
        fraction = min(m / t for m, t in zip(p.limit_mib, p.gpu_total_mib) if m is not None and t)
        env["GPUQ_GPU_MEM_MIB"] = str(mib)
        env["GPUQ_GPU_MEM_FRACTION"] = f"{fraction:.4f}"
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{fraction:.4f}"
        env["PYTORCH_ALLOC_CONF"] = f"per_process_memory_fraction:{fraction:.4f}"
    env["GPUQ_JOB_ID"] = str(job.id)
    env["GPUQ_CHECKPOINT_DIR"] = checkpoint_dir
    env["GPUQ_PROGRESS_FILE"] = progress_file
    env["GPUQ_REQUEUE_EXIT_CODE"] = str(REQUEUE_EXIT_CODE)
    env["GPUQ_RESTART_COUNT"] = str(job.requeues)
    if job.spec.array is not None:
        env["GPUQ_ARRAY_ID"] = str(job.spec.array.array_id)
        env["GPUQ_ARRAY_INDEX"] = str(job.spec.array.index)
    if simulated_gpu_dir is not None:
        env["GPUQ_SIMULATED_GPU_DIR"] = simulated_gpu_dir
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return env


def distributed_env(p: Placement, rank: int) -> dict[str, str]:
    """TensorFlow's and PyTorch's view of a job across nodes, for the part of rank ``rank``."""
    assert p.port is not None
    workers = [f"{part.address}:{p.port + 1 + i}" for i, part in enumerate(p.parts)]
    return {
        "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": rank}}),
        "MASTER_ADDR": p.parts[0].address,
        "MASTER_PORT": str(p.port),
        "WORLD_SIZE": str(len(p.parts)),
        "RANK": str(rank),
        "LOCAL_RANK": "0",
        "GPUQ_NODE_RANK": str(rank),
        "GPUQ_NUM_NODES": str(len(p.parts)),
    }
