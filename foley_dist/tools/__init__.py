"""Offline tools behind `foley-dist` subcommands: trace plots, checkpoint conversion."""
