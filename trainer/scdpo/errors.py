"""User-facing errors.

Anything a user can cause (a wrong path, a corrupt file, a LoRA for another base model, a
broken dataset row) is raised as one of these, with a message that names the thing and says
what to do. The CLI prints ``error: <message>`` and exits with status 2, no traceback.

``str(error)`` is always one line of at most :data:`MAX_MESSAGE_CHARS` characters (whitespace
collapsed, the middle of a longer message cut out), because messages quote text from the files
themselves; ``error.detail`` keeps the full message (``scdpo -v`` prints it).
"""

MAX_MESSAGE_CHARS = 400  # ~300 of message and the path it names


def one_line(text: object, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` on one line, at most ``limit`` characters. A longer one first has its long words (paths,
    module names, quoted values) shortened to their start and end, then its middle cut: the start (what)
    and the end (the fix) are kept."""
    words = str(text).split()
    text = " ".join(words)
    if len(text) <= limit:
        return text
    text = " ".join(w if len(w) <= _LONG_WORD else f"{w[:24]}...{w[-33:]}" for w in words)
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    return text[:head] + " ... " + text[-(limit - head - 5):]


_LONG_WORD = 60


class ScdpoError(Exception):
    """Base class of every error whose message is meant for the user."""

    def __str__(self) -> str:
        return one_line(self.detail)

    @property
    def detail(self) -> str:
        """The message in full (it may span lines or quote a long value)."""
        return super().__str__()


class InputFileError(ScdpoError):
    """A file or folder the user passed is missing, unreadable, corrupt or of the wrong kind."""


class WeightsFormatError(InputFileError):
    """A weights/checkpoint file is not a valid safetensors file of the expected kind."""


class IncompatibleModelError(ScdpoError):
    """A LoRA / cost model / checkpoint belongs to another base model or backbone."""


class DatasetError(ScdpoError):
    """A dataset row is broken (missing/undecodable image, wrong size, NaN value...)."""


class OutputPathError(ScdpoError):
    """An output location cannot be written."""
