"""Gin command-line handling shared by the train and eval entry points (T5X conventions).

    python -m optiml_jax.train --gin_file=gin/train/tiny_cpu.gin --gin.MODEL_DIR="'/tmp/run'" --gin.TRAIN_STEPS=50

* ``--gin_file=PATH`` (repeatable; also comma-separated) is looked up as given, then under each search path
  (the current directory, the repository root and its ``gin/`` folder, plus ``--gin_search_paths``).
* ``--gin.NAME=VALUE`` becomes the binding ``NAME=VALUE``: ``--gin.train.seq_len=256`` binds a parameter,
  ``--gin.MODEL_DIR="'/path'"`` a macro (values are Python/gin literals, so strings need inner quotes).
* ``--gin_bindings=...`` (repeatable) takes whole binding lines.

Every error names the flag or file at fault: unknown configurables or parameters, macros that no gin file
defines (a typo would otherwise silently create a new macro), unreadable files, unparsable values.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import pathlib
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import gin

from optiml_jax import errors

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_SEARCH_PATHS: tuple[str, ...] = (".", str(REPO_ROOT), str(REPO_ROOT / "gin"))

_MACRO_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")
_PARAM_RE = re.compile(r"^\s*([A-Za-z_][\w./]*)\.([A-Za-z_]\w*)\s*=")


class GinUsageError(errors.UserError):
    """A command-line or gin-file problem, phrased as what to fix."""


@dataclasses.dataclass
class GinArgs:
    """The gin part of a command line."""

    gin_files: list[str]
    gin_bindings: list[tuple[str, str]]   # (flag as typed, binding line)
    search_paths: list[str]
    help: bool
    rest: list[str]                       # arguments that are not gin flags
    verbose: bool = False                 # --verbose: tracebacks for user errors too


def split_gin_args(argv: Sequence[str]) -> GinArgs:
    """Separates ``--gin_file``, ``--gin.X=V``, ``--gin_bindings``, ``--gin_search_paths`` and ``--help``."""
    files: list[str] = []
    bindings: list[tuple[str, str]] = []
    paths: list[str] = []
    rest: list[str] = []
    want_help = False
    verbose = False
    args = list(argv)
    i = 0

    def value_of(arg: str, flag: str) -> str:
        nonlocal i
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
        if i + 1 >= len(args):
            raise GinUsageError(f"{flag} needs a value ({flag}=...)")
        i += 1
        return args[i]

    while i < len(args):
        arg = args[i]
        if arg in ("-h", "--help", "--helpfull"):
            want_help = True
        elif arg == "--verbose":
            verbose = True
        elif arg == "--gin_file" or arg.startswith("--gin_file="):
            files.extend(f for f in value_of(arg, "--gin_file").split(",") if f)
        elif arg == "--gin_search_paths" or arg.startswith("--gin_search_paths="):
            paths.extend(p for p in value_of(arg, "--gin_search_paths").split(",") if p)
        elif arg == "--gin_bindings" or arg.startswith("--gin_bindings="):
            line = value_of(arg, "--gin_bindings")
            bindings.append((f"--gin_bindings={line}", line))
        elif arg.startswith("--gin."):
            body = arg[len("--gin."):]
            if "=" not in body:
                raise GinUsageError(f"{arg}: expected --gin.NAME=VALUE, e.g. --gin.TRAIN_STEPS=100")
            name, value = body.split("=", 1)
            if not value.strip():
                raise GinUsageError(f"{arg}: empty value; strings need quotes, e.g. --gin.MODEL_DIR=\"'/tmp/run'\"")
            bindings.append((arg, f"{name} = {value}"))
        else:
            rest.append(arg)
        i += 1
    return GinArgs(files, bindings, paths, want_help, rest, verbose)


def resolve_gin_file(name: str, search_paths: Sequence[str]) -> str:
    """The first existing path for ``name`` (as given, then under each search path), else GinUsageError."""
    candidates = [name] if os.path.isabs(name) else [name] + [os.path.join(p, name) for p in search_paths]
    for c in candidates:
        if os.path.isfile(c):
            return os.path.abspath(c)
    raise GinUsageError(f"--gin_file={name}: file not found (looked in {', '.join(candidates)})")


class _QuietSearch(logging.Filter):
    """Drops gin's "Path not found" log lines: trying each search path in turn is expected, not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Path not found")


def _macro_defined(name: str) -> bool:
    try:
        gin.query_parameter(f"{name}/macro.value")
        return True
    except ValueError:
        return False


def parse_gin(gin_files: Sequence[str], bindings: Sequence[tuple[str, str] | str],
              search_paths: Sequence[str] = (), *, allow_new_macros: bool = False) -> None:
    """Clears gin, parses the files then each binding, and finalizes; errors name the file or flag at fault.

    ``bindings`` are ``(flag_as_typed, line)`` pairs or plain binding lines. A macro binding whose macro no file
    defines is rejected unless ``allow_new_macros``.
    """
    paths = list(search_paths) + [p for p in DEFAULT_SEARCH_PATHS if p not in search_paths]
    gin.clear_config()
    for p in paths:
        gin.add_config_file_search_path(p)
    quiet = _QuietSearch()
    logging.getLogger().addFilter(quiet)
    try:
        for f in gin_files:
            resolved = resolve_gin_file(f, paths)
            try:
                gin.parse_config_file(resolved)
            except (ValueError, SyntaxError, OSError, TypeError) as e:
                raise GinUsageError(f"--gin_file={f}: {e}") from None
    finally:
        logging.getLogger().removeFilter(quiet)
    for item in bindings:
        flag, line = item if isinstance(item, tuple) else (item, item)
        macro = _MACRO_RE.match(line)
        if macro and not _PARAM_RE.match(line) and not allow_new_macros and not _macro_defined(macro.group(1)):
            raise GinUsageError(
                f"{flag}: no gin file defines the macro {macro.group(1)!r}; check the spelling "
                f"(macros of these files: {', '.join(defined_macros()) or 'none'})")
        try:
            gin.parse_config(line)
        except (ValueError, SyntaxError, TypeError) as e:
            msg = str(e).splitlines()[0]
            hint = ""
            if "No configurable matching" in msg or "doesn't have a parameter" in msg:
                hint = " (run with --help for the configurables and their parameters)"
            raise GinUsageError(f"{flag}: {msg}{hint}") from None
    gin.finalize()


def bindings_of(config_str: str) -> dict[str, str]:
    """``{"train.seq_len": "128", "TRAIN_STEPS": "200", ...}`` from a gin config text as gin writes it.

    One entry per statement; a value continued over several lines (gin indents them or ends lines with ``\\``)
    is joined with single spaces, so equal configs give equal dicts however they were typed.
    """
    out: dict[str, str] = {}
    key: str | None = None
    for line in config_str.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and key is not None:
            out[key] = f"{out[key]} {line.strip()}".strip()
        elif " = " in line:
            key, value = line.split(" = ", 1)
            key = key.strip()
            out[key] = value.strip()
        if key is not None:
            out[key] = out[key].rstrip("\\").strip()
    return out


def defined_macros() -> list[str]:
    """Names of the macros bound in the current gin config."""
    names = set()
    for line in gin.config_str().splitlines():
        m = re.match(r"^\s*([A-Za-z_]\w*)\s*=", line)
        if m and _macro_defined(m.group(1)):
            names.add(m.group(1))
    return sorted(names)


def describe_configurable(fn: Callable[..., Any], name: str | None = None) -> str:
    """``name.param = default`` lines plus the first docstring paragraph, for --help."""
    name = name or getattr(fn, "__name__", str(fn))
    target = fn.__init__ if inspect.isclass(fn) and not dataclasses.is_dataclass(fn) else fn
    lines = [f"{name}:"]
    doc = inspect.getdoc(fn) or ""
    if doc:
        lines.append(textwrap.indent(doc.split("\n\n")[0], "    # "))
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return "\n".join(lines)
    for p in sig.parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = "REQUIRED" if p.default is inspect.Parameter.empty or p.default is gin.REQUIRED else repr(
            p.default)
        if len(default) > 70:
            default = default[:67] + "..."
        lines.append(f"    {name}.{p.name} = {default}")
    return "\n".join(lines)


def help_text(prog: str, summary: str, configurables: Sequence[tuple[str, Callable[..., Any]]],
              macros: Sequence[tuple[str, str]] = ()) -> str:
    """The --help page: usage, gin flags, macros and every configurable's parameters."""
    parts = [f"usage: python -m {prog} --gin_file=FILE [--gin_file=FILE ...] [--gin.NAME=VALUE ...]", "",
             summary.strip(), "",
             "flags:",
             "  --gin_file=FILE          gin config (repeatable); looked up as given, in ., the repo root, gin/",
             "  --gin.NAME=VALUE         one binding; strings need inner quotes: --gin.MODEL_DIR=\"'/tmp/run'\"",
             "  --gin_bindings='A.b=1'   a whole binding line (repeatable)",
             "  --gin_search_paths=DIRS  extra comma-separated folders for --gin_file and include", ""]
    if macros:
        parts.append("macros (bind with --gin.NAME=VALUE):")
        parts.extend(f"  {n:<18} {d}" for n, d in macros)
        parts.append("")
    parts.append("configurables (bind with --gin.Configurable.param=VALUE):")
    parts.extend(describe_configurable(fn, name) for name, fn in configurables)
    return "\n".join(parts)


def run_cli(main: Callable[[GinArgs], int | None], argv: Sequence[str] | None = None, *,
            help_fn: Callable[[], str]) -> int:
    """Parses gin flags from ``argv`` and calls ``main``.

    A `errors.UserError` raised anywhere below (usage, gin, data, checkpoint, run-directory problems) prints one
    ``error: ...`` line and returns 2; its traceback is shown only with ``--verbose`` or ``OPTIML_VERBOSE=1``.
    Other exceptions are bugs and propagate with their traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = errors.verbose_requested(argv)
    try:
        args = split_gin_args(argv)
        if args.help:
            print(help_fn())
            return 0
        if args.rest:
            raise GinUsageError(f"unknown argument(s) {args.rest}; use --gin_file=... and --gin.NAME=VALUE "
                                "(see --help)")
        if not args.gin_files:
            raise GinUsageError("no --gin_file given (e.g. --gin_file=gin/train/tiny_cpu.gin; see --help)")
        return int(main(args) or 0)
    except errors.UserError as e:
        if verbose:
            import traceback

            traceback.print_exc()
        print(f"error: {errors.one_line(e)}", file=sys.stderr)
        return errors.EXIT_USAGE
