"""One module per command. Hydra names a job after its task function's module,
so each Hydra command keeps its task here under the command's own name."""
