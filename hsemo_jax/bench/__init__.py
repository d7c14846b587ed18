"""Benchmarks: `hsemo-jax bench TARGET`. Each target is a module here with `add_arguments(parser)`
and `run(args)`; results are ratios against a reference measured in the same run."""
