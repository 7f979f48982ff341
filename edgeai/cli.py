"""The `edgeai` command line. Each subcommand lives with its feature; this file only wires them up.

Subcommand modules expose `add_parser(subparsers)` which registers the command and sets `func`.
They are imported lazily so that `edgeai --help` stays fast.
"""
import argparse
import importlib
import sys

# (module, attribute) pairs; each module's add_parser registers one or more subcommands.
_COMMANDS = [
    "edgeai.commands.generate",
    "edgeai.commands.models",
    "edgeai.commands.retrieval",
    "edgeai.commands.evaluate",
    "edgeai.commands.bench",
    "edgeai.commands.serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeai", description="Small language models and RAG, offline.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:  # a feature whose optional dependency is missing stays out of the menu
            print(f"edgeai: command module {name} unavailable: {exc}", file=sys.stderr)
            continue
        mod.add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"edgeai: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
