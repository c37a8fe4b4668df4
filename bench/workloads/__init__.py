"""One module per workload family; each has ``run(ctx) -> list[Row]`` and ``IMPLS``."""
