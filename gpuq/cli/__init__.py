"""The ``gpuq`` command: a typer app that talks only to the daemon's socket."""
