"""Each benchmark script owns one marked section of benchmarks/README.md and rewrites only that section."""
from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"


def write_section(text: str, begin: str, end: str) -> None:
    """Replace the text between `begin` and `end` (markers included in `text`), or append it."""
    current = README.read_text() if README.exists() else "# Benchmarks\n"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        current = head + text + rest.split(end, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + text + "\n"
    README.write_text(current)
