"""Argument types for the controller's management commands.

Each returns a function usable as an argparse ``type=``: a bad value raises
``argparse.ArgumentTypeError``, which argparse reports as ``argument --option: message``
(a ``CommandError`` under ``call_command``, a usage error and exit status 2 from the
command line) instead of a traceback further down.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

from django.core.management.base import CommandError

from ...dispatchers.labels import has_control_characters

T = TypeVar("T")

# Long enough for any retention or grace period, short enough that ``now - period`` is a
# valid datetime (and a sane one).
MAX_DAYS = 36_500
MAX_SECONDS = MAX_DAYS * 86_400


def int_range(minimum: int, maximum: int) -> Callable[[str], int]:
    """An integer in ``[minimum, maximum]``."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if not minimum <= number <= maximum:
            raise argparse.ArgumentTypeError(
                f"must be between {minimum} and {maximum}, got {number}"
            )
        return number

    return parse


def float_range(minimum: float, maximum: float) -> Callable[[str], float]:
    """A finite number in ``[minimum, maximum]`` (no ``nan`` or ``inf``)."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {value!r}")
        if not minimum <= number <= maximum:
            raise argparse.ArgumentTypeError(
                f"must be between {minimum:g} and {maximum:g}, got {number:g}"
            )
        return number + 0.0  # -0 is 0

    return parse


def check_label(value: object, *, max_length: int) -> str | None:
    """Why ``value`` is not a usable name (empty, padded, too long, not UTF-8, control
    characters), or None."""
    if not isinstance(value, str):
        return "must be text"
    if not value.strip():
        return "must not be empty"
    if value != value.strip():
        # "eu-1 " would be another client than "eu-1", one nobody can tell apart.
        return "must not start or end with white space"
    if len(value) > max_length:
        return f"must be at most {max_length} characters long"
    try:
        # Bytes that are not UTF-8 reach ``sys.argv`` as lone surrogates, which the
        # database driver cannot encode.
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid UTF-8"
    if has_control_characters(value):
        return "must not contain control characters"
    return None


def printable(text: str) -> str:
    """``text`` with the characters a terminal would act on (escape sequences, new lines,
    undecodable bytes) written as escapes, for echoing an operator's input in a message."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def label(max_length: int) -> Callable[[str], str]:
    """A name ``check_label`` accepts, at most ``max_length`` long."""

    def parse(value: str) -> str:
        problem = check_label(value, max_length=max_length)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


class Once(argparse.Action):
    """Store an option's value, refusing the option a second time: for options where a
    repeat is a contradiction rather than an override."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        if getattr(namespace, self.dest, None) is not None:
            raise argparse.ArgumentError(self, "given more than once")
        setattr(namespace, self.dest, values)


def checked(name: str, value: object, parse: Callable[[str], T]) -> T:
    """Check ``value`` with an option's type: for a setting used as the option's default, or
    for an option passed to ``call_command`` as a keyword (argparse does not see those)."""
    try:
        return parse(value)  # type: ignore[arg-type]
    except argparse.ArgumentTypeError as exc:
        raise CommandError(f"{name} {exc}.") from None
