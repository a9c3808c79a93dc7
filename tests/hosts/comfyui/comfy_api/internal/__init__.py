"""Markers execution.py uses to recognise V3 nodes and outputs."""


class _ComfyNodeInternal:
    pass


class _NodeOutputInternal:
    pass


def prune_dict(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}
