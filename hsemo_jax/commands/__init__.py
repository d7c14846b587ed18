"""One module per `hsemo-jax` subcommand, named after it (`train-head` -> `train_head.py`), each with
`add_arguments(parser)` and `run(args) -> int`: argument parsing, printing, calls into the library.
`arguments.py` holds the argument types and blocks several commands share. Nothing in the library
imports this package; `hsemo_jax/cli.py` imports a command's module only when it runs.
"""
