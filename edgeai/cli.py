"""The `edgeai` command line. Each subcommand lives with its feature; this file only wires them up.

Subcommand modules expose `add_parser(subparsers)` which registers the command and sets `func`.
They are imported lazily so that `edgeai --help` stays fast.
"""
import argparse
import importlib
import os
import sys

# (module, attribute) pairs; each module's add_parser registers one or more subcommands.
_COMMANDS = [
    "edgeai.commands.generate",
    "edgeai.commands.models",
    "edgeai.commands.retrieval",
    "edgeai.commands.evaluate",
    "edgeai.commands.bench",
    "edgeai.commands.serve",
    "edgeai.commands.distill",
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


def _unicode_args(argv) -> None:
    """Arguments that were not valid UTF-8 reach Python as lone surrogates, which no tokenizer accepts: say so."""
    for a in argv:
        try:
            a.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"argument {a!r} is not valid UTF-8 text") from None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        _unicode_args(sys.argv[1:] if argv is None else argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `edgeai generate ... | head`: the reader left; nothing more to say
        sys.stderr.close()
        return 1
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"edgeai: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a user never gets a traceback; EDGEAI_DEBUG=1 shows it
        if os.environ.get("EDGEAI_DEBUG"):
            raise
        print(f"edgeai: error: {type(exc).__name__}: {exc} (an edgeai bug or an unexpected input; "
              "EDGEAI_DEBUG=1 shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
