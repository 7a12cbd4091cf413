"""Scheduling: the pure policy (``policy``), the daemon loop that applies it, and the trace simulator."""
