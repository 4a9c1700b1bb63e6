"""User-supplied text (calibration traffic, eval texts) read strictly: a binary file, an invalid
UTF-8 byte or a file with hardly any letters is refused with one line instead of being tokenized
as noise for minutes."""
from __future__ import annotations

from pathlib import Path

from harness.errors import HarnessError

MIN_LETTER_SHARE = 0.2  # prose, code, JSON and chat logs are far above; base64 and binaries far below
SNIFF_BYTES = 1 << 20


def letter_share(text: str) -> float:
    visible = [c for c in text if not c.isspace()]
    return sum(c.isalpha() for c in visible) / len(visible) if visible else 0.0


def read_text_file(path: Path, what: str) -> str:
    """The file's text; HarnessError naming ``what`` and the reason when it is not text."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise HarnessError(f"{what} {path} cannot be read ({e.strerror or e})") from None
    if b"\x00" in data[:SNIFF_BYTES]:
        raise HarnessError(f"{what} {path} is a binary file (NUL bytes), not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HarnessError(f"{what} {path} is not UTF-8 text (invalid byte at offset {e.start})") from None
    if not text.strip():
        raise HarnessError(f"{what} {path} is empty")
    share = letter_share(text[:SNIFF_BYTES])
    if share < MIN_LETTER_SHARE:
        raise HarnessError(f"{what} {path} does not look like text ({share:.0%} letters among its visible "
                           f"characters, fewer than {MIN_LETTER_SHARE:.0%})")
    return text


def check_long_enough(path: Path, tokens_needed: int, what: str, knob: str) -> None:
    """Before any tokenizer exists: a byte-level tokenizer spends at least one byte per token, so a
    file with fewer bytes than a window needs tokens can never fill one."""
    size = Path(path).stat().st_size
    if size < tokens_needed:
        raise HarnessError(f"{what} {path} has {size} bytes, fewer than the {tokens_needed} tokens of one window "
                           f"({knob}); give a longer text or lower {knob}")
