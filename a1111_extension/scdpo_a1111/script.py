"""The always-visible "SC-DPO Safety" script of txt2img and img2img.

Hooks, in the order the webui calls them for a job (``modules/processing.py``):

* ``process``: decide the job's effective settings (:func:`~.options.resolve_request`; enforce wins),
  write them to the infotext, make the chosen LoRA resolvable, arm the live-preview gate;
* ``before_process_batch`` (each batch, before extra networks are parsed): add
  ``<lora:NAME:STRENGTH>`` to this batch's prompts and hires prompts;
* ``postprocess_image`` / ``postprocess_image_after_composite`` (each image, before it is saved):
  score it and hide it if unsafe; the per-image verdict goes into its infotext;
* ``postprocess``: disarm the preview gate, summarise in the job's comments.

The webui catches and only logs exceptions raised by script hooks (the image would then pass
unchanged), so the gating hooks catch everything themselves and block the image instead.
"""

from __future__ import annotations

from modules import scripts, shared

from . import gate, loras, runtime
from .options import ARG_NAMES, DEFAULT_ACTION, DEFAULT_STRENGTH, DEFAULT_THRESHOLD, NO_LORA, SafetyRequest, resolve_request

TITLE = "SC-DPO Safety"
REQUEST_ATTR = "scdpo_request"
VERDICTS_ATTR = "scdpo_verdicts"
INFO_SETTINGS = "SC-DPO safety"
INFO_VERDICT = "SC-DPO gate"


def _gate_infotext(p=None, index=0, use_main_prompt=False, **_):
    """Infotext value of one image (called by ``create_infotext`` with its locals)."""
    verdicts = getattr(p, VERDICTS_ATTR, None) or {}
    if use_main_prompt or p is None:
        if not verdicts:
            return None
        blocked = sum(v.blocked for v in verdicts.values())
        return f"{blocked} of {len(verdicts)} images {gate.BLOCKED_BY}"
    verdict = verdicts.get((getattr(p, "iteration", 0), index))
    return verdict.describe() if verdict else None


def job_request(p, args) -> SafetyRequest:
    """The job's :class:`SafetyRequest`, decided once and kept on ``p``."""
    request = getattr(p, REQUEST_ATTR, None)
    if request is not None:
        return request
    opts = shared.opts
    try:
        request = resolve_request(args, opts)
    except Exception as exc:  # cannot happen with sane args; never let it switch the gate off
        request = SafetyRequest(True, None, DEFAULT_STRENGTH, DEFAULT_THRESHOLD, "black",
                                notes=[f"settings error {exc}"])
    setattr(p, REQUEST_ATTR, request)
    setattr(p, VERDICTS_ATTR, {})
    if not request.enabled:
        return request
    if request.lora:
        problem = (runtime.lora_refusal(request.lora, opts)
                   or loras.make_available(request.lora, runtime.lora_dir(), runtime.own_loras(opts)))
        if problem:
            print(f"[SC-DPO] {problem}; generating without a safety LoRA")
            request.notes.append(problem)
            request.lora = None
    if request.enforced and getattr(p, "disable_extra_networks", False):
        p.disable_extra_networks = False  # an API field must not switch the enforced LoRA off
        request.notes.append("extra networks re-enabled")
    if runtime.scdpo_problem:
        request.notes.append("scdpo missing, every image is blocked")
    p.extra_generation_params[INFO_SETTINGS] = request.describe()
    p.extra_generation_params[INFO_VERDICT] = _gate_infotext
    return request


def tag_batch(p, request: SafetyRequest, prompts) -> None:
    """Add the LoRA tag to this batch's prompts, to the same entries of ``all_prompts`` (the infotext
    is made from those) and of ``all_hr_prompts`` (the hires pass parses those)."""
    batch = slice(p.iteration * p.batch_size, (p.iteration + 1) * p.batch_size)
    for i, prompt in enumerate(prompts):
        prompts[i] = loras.with_lora(prompt, request.lora, request.strength)
    for name in ("all_prompts", "all_hr_prompts"):
        values = getattr(p, name, None)
        if isinstance(values, list):
            for i in range(*batch.indices(len(values))):
                values[i] = loras.with_lora(values[i], request.lora, request.strength)
    if p.iteration == 0 and isinstance(getattr(p, "main_prompt", None), str):  # the grid's infotext
        p.main_prompt = loras.with_lora(p.main_prompt, request.lora, request.strength)


class ScdpoSafetyScript(scripts.Script):
    def title(self):
        return TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        import gradio as gr

        with gr.Accordion(TITLE, open=False):
            enabled = gr.Checkbox(value=False, label="Enable: safety LoRA + output gate")
            lora = gr.Dropdown(choices=[NO_LORA, *runtime.lora_choices()], value=NO_LORA, label="Safety LoRA")
            strength = gr.Slider(minimum=0.0, maximum=2.0, step=0.05, value=DEFAULT_STRENGTH, label="LoRA strength")
            threshold = gr.Slider(minimum=0.01, maximum=0.99, step=0.01, value=DEFAULT_THRESHOLD,
                                  label="Gate threshold: block above this probability unsafe (0.5 = calibrated)")
            action = gr.Radio(choices=list(gate.ACTIONS), value=DEFAULT_ACTION, label="Gate action")
        controls = [enabled, lora, strength, threshold, action]
        assert len(controls) == len(ARG_NAMES)
        return controls

    def process(self, p, *args):
        request = job_request(p, args)
        runtime.set_active(request if request.enabled else None)

    def before_process_batch(self, p, *args, **kwargs):
        request = job_request(p, args)
        if request.enabled and request.lora:
            tag_batch(p, request, kwargs.get("prompts", p.prompts))

    def postprocess_image(self, p, pp, *args):
        self._gate(p, pp, args)

    def postprocess_image_after_composite(self, p, pp, *args):
        if gate.verdict_of(pp.image) is None:  # another script replaced the image after our gate
            self._gate(p, pp, args)

    def postprocess(self, p, processed, *args):
        runtime.set_active(None)
        request = getattr(p, REQUEST_ATTR, None)
        verdicts = getattr(p, VERDICTS_ATTR, None) or {}
        if request is None or not request.enabled or not verdicts:
            return
        blocked = sum(v.blocked for v in verdicts.values())
        warned = sum(v.unsafe and not v.blocked for v in verdicts.values())
        line = f"SC-DPO gate: {blocked} of {len(verdicts)} images blocked"
        if warned:
            line += f", {warned} UNSAFE passed with warning"
        errors = {v.error for v in verdicts.values() if v.error}
        if errors:
            line += f" (scoring failed: {'; '.join(sorted(errors))})"
        print(f"[SC-DPO] {line}")
        processed.comments = (processed.comments or "") + line + "\n"

    def _gate(self, p, pp, args) -> None:
        try:
            request = job_request(p, args)
            if not request.enabled:
                return
            image, verdict = runtime.gate_one(pp.image, request, shared.opts)
        except Exception as exc:  # fail closed
            image = gate.blacked_out(pp.image, f"{type(exc).__name__}: {exc}")
            verdict = gate.verdict_of(image)
        pp.image = image
        verdicts = getattr(p, VERDICTS_ATTR, None)
        if verdicts is None:
            verdicts = {}
            setattr(p, VERDICTS_ATTR, verdicts)
        verdicts[(getattr(p, "iteration", 0), getattr(p, "batch_index", len(verdicts)))] = verdict
        if verdict.blocked:
            print(f"[SC-DPO] image {len(verdicts)} of the job: {verdict.describe()}")
        elif verdict.unsafe:
            print(f"[SC-DPO] warning: unsafe image passed on request: {verdict.describe()}")
