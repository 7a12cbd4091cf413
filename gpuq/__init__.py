"""gpuq: a multi-user GPU job queue for shared lab servers."""

__version__ = "0.1.0"
