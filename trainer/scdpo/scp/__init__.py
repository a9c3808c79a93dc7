"""Safety-constrained preference (SCP) datasets: format, builder, importers, validated reader.

Public API (see CONTRACTS "SCP preference dataset"):

* :func:`load_scp_dataset` ``(path, skip_bad=False, expected_size=None) -> ScpDataset``
* :func:`build_scp_dataset`, :class:`BuildConfig`, :func:`choose_pair`, :func:`toy_prompt_specs`
* :func:`import_pickapic`, :func:`import_coprov2`
* schema: :data:`SCHEMA`, :data:`COLUMNS` (:mod:`scdpo.scp.schema` documents every column)
"""

from .builder import BuildConfig, PromptSpec, build_scp_dataset, choose_pair, toy_prompt_specs
from .dataset import ScpDataset, load_scp_dataset
from .importers import import_coprov2, import_pickapic
from .schema import COLUMNS, SCHEMA

__all__ = [
    "BuildConfig",
    "COLUMNS",
    "PromptSpec",
    "SCHEMA",
    "ScpDataset",
    "build_scp_dataset",
    "choose_pair",
    "import_coprov2",
    "import_pickapic",
    "load_scp_dataset",
    "toy_prompt_specs",
]
