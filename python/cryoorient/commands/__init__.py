"""One module per ``cryoorient`` subcommand, each with HELP, DESCRIPTION, add_args(parser) and main(args) -> int;
COMMANDS lists them in the order ``cryoorient --help`` shows them, each named after its module."""

from . import abinitio, demo, evaluate, info, map, reconstruct, recover, refine, simulate, train, train_comparison

COMMANDS = (info, map, simulate, demo, recover, abinitio, evaluate, reconstruct, train, train_comparison, refine)
