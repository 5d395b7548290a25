"""Flags with environment-variable fallbacks: every process builds its config here.

Precedence: command-line flag, then environment variable, then default. The
`--help` text names the variable and the default of every option.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)


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
    return _bounded(kind, lambda v: v > 0, "> 0")


def non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that rejects negative numbers (0 usually means "off")."""
    return _bounded(kind, lambda v: v >= 0, ">= 0")


def _bounded(kind: Callable[[str], Any], ok: Callable[[Any], bool], rule: str) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        value = kind(raw)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {raw}")
        return value

    parse.__name__ = kind.__name__
    return parse


def add_secret(parser: argparse.ArgumentParser, name: str, env: str, help: str) -> None:
    """Add `--name-file` for a secret, and make `--name VALUE` an error.

    A value on argv is readable by every local user (`ps`, /proc/PID/cmdline),
    so a secret comes from $env or from a file; read it back with `secret()`.
    """

    class _Refuse(argparse.Action):
        def __call__(self, p, namespace, values, option_string=None) -> None:
            p.error(f"{option_string} on the command line is visible to every local user (ps): "
                    f"set ${env} or use --{name}-file")

    parser.add_argument(f"--{name}", action=_Refuse, metavar="(refused)",
                        help=f"refused: {help} comes from env {env}; or --{name}-file")
    parser.add_argument(f"--{name}-file", default=os.environ.get(f"{env}_FILE", ""),
                        metavar="PATH", help=f"file holding the {help} [env {env}_FILE]")


def secret(parser: argparse.ArgumentParser, path: str, env: str) -> str:
    """The secret in the file at `path` if given (trailing newline dropped), else $env, else ""."""
    if not path:
        return os.environ.get(env, "")
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        parser.error(f"cannot read secret file {path}: {exc.strerror}")
        raise  # unreachable: parser.error exits


def readable_files(parser: argparse.ArgumentParser, **paths: str) -> None:
    """Fail at start-up, naming the flag, when a given certificate or key file cannot be read."""
    for flag, path in paths.items():
        if path and not os.access(path, os.R_OK):
            parser.error(f"--{flag.replace('_', '-')} {path}: not a readable file")


def url_has_password(url: str) -> bool:
    """True for a URL carrying a password (`redis://user:pass@host`), which must not go on argv."""
    try:
        return bool(urlparse(url).password)
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """The URL with its password replaced by `***`, for logs."""
    try:
        parts = urlparse(url)
        if not parts.password:
            return url
    except ValueError:
        return "<unparsable URL>"
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def redis_url(parser: argparse.ArgumentParser, flag_value: str, path: str, env: str) -> str:
    """The Redis URL from `--redis-url-file`, else the flag or $env; a password on argv is refused
    (every local user sees argv in `ps`), like every other secret."""
    if path:
        return secret(parser, path, env)
    if url_has_password(flag_value) and flag_value != os.environ.get(env):
        parser.error(f"--redis-url on the command line carries a password, visible to every local "
                     f"user (ps): set {env} or use --redis-url-file")
    return flag_value


def host_port(host: str, port: int) -> str:
    """`host:port` for gRPC targets and binds, with an IPv6 literal in brackets (`[::1]:8790`)."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True for loopback addresses and `localhost` (names are not resolved)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def setup_logging(component: str, ident: str, level: str = "INFO") -> None:
    """key=value log lines tagged with the process's component and id."""
    fmt = f"ts=%(asctime)s level=%(levelname)s {component}={ident} logger=%(name)s msg=\"%(message)s\""
    logging.basicConfig(level=level.upper(), format=fmt)
