"""Text as error messages and logs quote it: bounded, so a huge value or a stray line of some
other file is never echoed whole."""

from __future__ import annotations


def shorten(text: str, limit: int) -> str:
    """``text`` itself when it has at most ``limit`` characters, else its start and ``...``,
    ``limit`` characters in all."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
