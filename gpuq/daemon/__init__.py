"""The per-node daemon: store, API, scheduler (leader), node agent and RQ workers."""
