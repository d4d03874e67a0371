"""Subcommands of `python -m training`: each module has `add_parser(subparsers)` and `run(args)`
and calls the library module of the same name in `training/`."""
