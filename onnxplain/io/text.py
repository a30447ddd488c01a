"""Reading the user's small text files (preprocessing specs, labels) with one clear error for unreadable ones."""
from __future__ import annotations

from pathlib import Path

from ..errors import OnnxplainError


def read_text(path: Path, what: str) -> str:
    """The text of file `path` (UTF-8, a byte-order mark dropped); a missing, binary or unreadable file is an
    OnnxplainError that names `what` it should have been."""
    path = Path(path)
    if not path.is_file():
        raise OnnxplainError(f"{what} not found: {path}" if not path.exists() else
                             f"{what} {path} is not a regular file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise OnnxplainError(f"{what} {path} is not a UTF-8 text file") from None
    except OSError as error:
        raise OnnxplainError(f"cannot read {what} {path}: {error.strerror or error}") from None
