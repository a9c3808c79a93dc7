"""SC-DPO Safety Gate and SC-DPO Cost Score: ComfyUI's side of :mod:`scdpo.gate`.

The gate scores every image of an ``IMAGE`` batch (``[B,H,W,C]`` float 0..1) and handles the
unsafe ones by ``action``; it **fails closed**: if scoring raises or returns anything but one
finite cost per image, no image leaves the node (every output is blocked, the node text says why).
Verdicts and redactions are the core's; this file adds the node schemas, ComfyUI's progress bar
and cancel, the ``stop`` action (``block_execution``) and the report text.

``threshold`` is a probability: an image is unsafe when ``sigmoid(cost - calibrated threshold)``
exceeds it, so 0.5 is exactly the cost model's calibrated verdict and lower values are stricter.

What the gate did is in its node output (:func:`gate_ui`), which ComfyUI keeps in ``/history``
under ``outputs[<gate node id>]``: ``text`` (the report; ``blocked by SC-DPO gate: <why>`` first when
it blocked) and ``scdpo_gate`` (one dict: ``blocked``, ``message``, ``images``, ``unsafe``,
``action``, ``threshold``). A blocked prompt still ends as ``success`` in ComfyUI (a block is not an
error there), so that entry is where scripts read that and why nothing was saved.
"""

from __future__ import annotations

import torch

import comfy.model_management
import comfy.utils

from scdpo import gate
from scdpo.errors import ScdpoError

from .comfy_schema import io, ui
from .cost_model_loader import CostModelType

STOP = "stop"  # ComfyUI's own action: block_execution, so nothing downstream runs
ACTIONS = [gate.BLUR, gate.PIXELATE, gate.BLACK, gate.REPLACE, STOP, gate.PASS]
ACTION_HELP = ("blur / pixelate / black: redact unsafe images; replace: put the replacement image in their place; "
               "stop: if any image is unsafe, nothing downstream runs (no Save node receives anything); "
               "pass: images unchanged, only the flags/mask mark them")
_DONE = {gate.BLUR: "blurred", gate.PIXELATE: "pixelated", gate.BLACK: "blacked out", gate.REPLACE: "replaced",
         STOP: "stopped", gate.PASS: "passed (flagged)"}


def _interrupt_exceptions() -> tuple:
    interrupt = getattr(comfy.model_management, "InterruptProcessingException", None)
    return (interrupt,) if interrupt is not None else ()


def scorer_with_progress(cost_model, n: int):
    """``images -> CostResult`` with ComfyUI's progress bar (and its cancel button) over the batch."""
    bar = comfy.utils.ProgressBar(n)

    def progress(done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, total)

    return lambda images: cost_model.score(images, progress=progress)


def gate_ui(text: str, n: int, unsafe: int, action: str, threshold: float, blocked: str | None = None) -> dict:
    """The gate's node output (shown on the node; kept by ComfyUI in ``/history``)."""
    summary = {"blocked": blocked is not None, "message": blocked, "images": n, "unsafe": unsafe, "action": action,
               "threshold": float(threshold)}
    return {"text": [text], "scdpo_gate": [summary]}


def verdict_lines(verdicts: list[gate.Verdict], action: str) -> list[str]:
    lines = []
    for i, verdict in enumerate(verdicts):
        shown = f"UNSAFE ({verdict.category})" if verdict.unsafe else "safe"
        outcome = _DONE[action] if verdict.unsafe else "passed"
        lines.append(f"image {i + 1}: cost {verdict.cost:+.2f}, p(unsafe) {verdict.probability:.2f} -> {shown}, "
                     f"{outcome}")
    return lines


class SafetyGate(io.ComfyNode):
    """IMAGE → IMAGE with unsafe images handled by ``action``; also per-image costs, flags and a mask."""

    NODE_ID = "SCDPOSafetyGate"
    DISPLAY_NAME = "SC-DPO Safety Gate"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY_NAME,
            category="SC-DPO safety",
            description="Scores each image with the safety cost model and blurs / pixelates / blacks out / replaces "
                        "the unsafe ones, or stops the graph. Fails closed: if scoring fails, no image passes.",
            inputs=[
                io.Image.Input("images"),
                CostModelType.Input("cost_model"),
                io.Float.Input("threshold", default=0.5, min=0.01, max=0.99, step=0.01,
                               tooltip="Unsafe when p(unsafe) exceeds this; 0.5 = the cost model's calibrated "
                                       "threshold, lower = stricter."),
                io.Combo.Input("action", options=ACTIONS, default=gate.BLUR, tooltip=ACTION_HELP),
                io.Image.Input("replacement", optional=True, tooltip="Image put in place of unsafe ones (action "
                                                                     "'replace'); resized to fit."),
            ],
            outputs=[
                io.Image.Output(display_name="images"),
                io.Float.Output(display_name="costs", is_output_list=True),
                io.Boolean.Output(display_name="is_unsafe", is_output_list=True),
                io.Mask.Output(display_name="unsafe_mask", tooltip="[B,H,W]: 1 over each unsafe image."),
                io.String.Output(display_name="report"),
            ],
        )

    @classmethod
    def execute(cls, images: torch.Tensor, cost_model, threshold: float = 0.5, action: str = gate.BLUR,
                replacement: torch.Tensor | None = None):
        if action not in ACTIONS:
            raise ScdpoError(f"unknown gate action {action!r}; choose one of {', '.join(ACTIONS)}")
        if action == gate.REPLACE and replacement is None:
            raise ScdpoError("the Safety Gate's action is 'replace' but no replacement image is connected; connect one "
                             "(e.g. a Load Image node) or pick another action")
        n, h, w = images.shape[0], images.shape[1], images.shape[2]
        score = scorer_with_progress(cost_model, n)
        # a cancel is not a scoring failure: it propagates and ComfyUI stops the whole prompt
        verdicts = gate.judge(images, score, threshold, passthrough=_interrupt_exceptions())
        if verdicts and verdicts[0].failed:  # the core fails a whole batch at once
            message = gate.blocked_message(f"all {n} images withheld, {verdicts[0].why()}")
            return cls._blocked(n, h, w, images, message, message, n, action, threshold)
        unsafe = [v.unsafe for v in verdicts]
        lines = verdict_lines(verdicts, action)
        report = "\n".join(lines + [f"{sum(unsafe)} of {n} unsafe; action {action}; threshold p>{threshold:g}"])
        costs = [v.cost for v in verdicts]
        mask = torch.tensor(unsafe, dtype=torch.float32).view(n, 1, 1).expand(n, h, w).contiguous()
        if action == STOP and any(unsafe):
            message = gate.blocked_message(f"{sum(unsafe)} of {n} images unsafe, action stop: nothing downstream runs")
            return cls._blocked(n, h, w, images, message, f"{message}\n{report}", sum(unsafe), action, threshold)
        out = images if action in (gate.PASS, STOP) else gate.redact_batch(images, unsafe, action, replacement)
        return io.NodeOutput(out, costs, unsafe, mask, report, ui=gate_ui(report, n, sum(unsafe), action, threshold))

    @staticmethod
    def _blocked(n: int, h: int, w: int, images: torch.Tensor, message: str, text: str, unsafe: int, action: str,
                 threshold: float):
        """Every output blocked; the placeholders are safe too (black, flagged) should a host ignore the block."""
        placeholders = (torch.zeros_like(images), [float("nan")] * n, [True] * n, torch.ones(n, h, w), text)
        return io.NodeOutput(*placeholders, ui=gate_ui(text, n, unsafe, action, threshold, blocked=message),
                             block_execution=message)


class CostScore(io.ComfyNode):
    """IMAGE → per-image costs and verdicts (no gating), for branching and logging."""

    NODE_ID = "SCDPOCostScore"
    DISPLAY_NAME = "SC-DPO Cost Score"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY_NAME,
            category="SC-DPO safety",
            description="Safety cost of each image (positive = unsafe) and the cost model's verdict at its calibrated "
                        "threshold. Does not change or block images; use the Safety Gate for that.",
            inputs=[io.Image.Input("images"), CostModelType.Input("cost_model")],
            outputs=[
                io.Float.Output(display_name="costs", is_output_list=True),
                io.Float.Output(display_name="probabilities", is_output_list=True),
                io.Boolean.Output(display_name="is_unsafe", is_output_list=True),
                io.String.Output(display_name="report"),
            ],
        )

    @classmethod
    def execute(cls, images: torch.Tensor, cost_model):
        # a failure raises: the prompt stops; 0.5 is the cost model's calibrated verdict
        verdicts = gate.verdicts_of(gate.checked_score(scorer_with_progress(cost_model, images.shape[0]), images), 0.5)
        report = "\n".join(verdict_lines(verdicts, gate.PASS))
        return io.NodeOutput([v.cost for v in verdicts], [v.probability for v in verdicts],
                             [v.unsafe for v in verdicts], report, ui=ui.PreviewText(report))
