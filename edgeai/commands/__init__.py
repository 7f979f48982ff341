"""CLI subcommands, one module per feature; registered in edgeai/cli.py."""
