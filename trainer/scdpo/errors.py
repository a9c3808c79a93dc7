"""User-facing errors.

Anything a user can cause (a wrong path, a corrupt file, a LoRA for another base model, a
broken dataset row) is raised as one of these, with a message that names the thing and says
what to do. The CLI prints ``error: <message>`` and exits with status 2, no traceback.
"""


class ScdpoError(Exception):
    """Base class of every error whose message is meant for the user."""


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
