"""Node side: GPU probe (NVML or simulated), job environment, launcher/supervisor, RQ worker."""
