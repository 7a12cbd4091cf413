"""What a job is (``gpuq.jobs.model``) and the runtime training scripts import (``gpuq.jobs.tf``)."""
