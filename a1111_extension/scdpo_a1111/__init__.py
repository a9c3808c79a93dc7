"""SC-DPO Safety, the AUTOMATIC1111 / Forge adapter: a thin layer over the ``scdpo`` package.

Modules: :mod:`.gate` (score + hide, host-neutral), :mod:`.options` (settings, enforce, request
resolution), :mod:`.loras` (the ``<lora:…>`` tag, LoRA files), :mod:`.runtime` (process state),
:mod:`.script` (the always-visible script), :mod:`.callbacks` (save/grid/preview hooks, API route,
trainer tab), :mod:`.loader` (entry point used by ``scripts/scdpo_safety.py``).
"""
