"""Flags with environment-variable fallbacks: every process builds its config here.

Precedence: command-line flag, then environment variable, then default. The
`--help` text names the variable and the default of every option.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from typing import Any


def add_flag(
    parser: argparse.ArgumentParser,
    name: str,
    env: str,
    default: Any,
    help: str,
    type: Callable[[str], Any] = str,
    choices: list[str] | None = None,
) -> None:
    """Add `--name`, defaulting to $env when set, else to `default`."""
    raw = os.environ.get(env)
    value = type(raw) if raw not in (None, "") else default
    parser.add_argument(
        f"--{name}",
        type=type,
        default=value,
        choices=choices,
        help=f"{help} [env {env}; default {default!r}]",
    )


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that rejects zero and negative numbers."""

    def parse(raw: str) -> Any:
        value = kind(raw)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {raw}")
        return value

    parse.__name__ = kind.__name__
    return parse


def setup_logging(component: str, ident: str, level: str = "INFO") -> None:
    """key=value log lines tagged with the process's component and id."""
    fmt = f"ts=%(asctime)s level=%(levelname)s {component}={ident} logger=%(name)s msg=\"%(message)s\""
    logging.basicConfig(level=level.upper(), format=fmt)
