"""Stand-in for comfy.utils: the progress bar (with ComfyUI's global hook) and the table that maps
a diffusers UNet's parameter names to the original LDM layout ComfyUI keeps SD1.x/SDXL UNets in."""

from __future__ import annotations

PROGRESS_BAR_ENABLED = True
PROGRESS_BAR_HOOK = None
updates: list = []  # (node_id, value, total) of every update (tests read it)


def set_progress_bar_global_hook(function):
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total, self.current, self.node_id, self.hook = total, 0, node_id, PROGRESS_BAR_HOOK

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        updates.append((self.node_id, self.current, self.total))
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)

    def update(self, value):
        self.update_absolute(self.current + value)


# -- diffusers name -> LDM name ------------------------------------------------------------------
_RESNET_RENAME = {  # diffusers resnet part -> LDM ResBlock part
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}
_TRANSFORMER_PARTS = (
    [f"norm{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")]
    + [f"attn{a}.{m}.weight" for a in (1, 2) for m in ("to_q", "to_k", "to_v", "to_out.0")]
    + [f"attn{a}.to_out.0.bias" for a in (1, 2)]
    + [f"ff.net.{m}.{p}" for m in ("0.proj", "2") for p in ("weight", "bias")]
)
_ATTENTION_PARTS = [f"{m}.{p}" for m in ("norm", "proj_in", "proj_out") for p in ("weight", "bias")]
_BASIC = {
    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
}


def _resnet(table, diffusers_prefix, ldm_prefix):
    for d_part, l_part in _RESNET_RENAME.items():
        for p in ("weight", "bias"):
            table[f"{diffusers_prefix}.{d_part}.{p}"] = f"{ldm_prefix}.{l_part}.{p}"


def _attention(table, diffusers_prefix, ldm_prefix, depth):
    for part in _ATTENTION_PARTS:
        table[f"{diffusers_prefix}.{part}"] = f"{ldm_prefix}.{part}"
    for t in range(depth):
        for part in _TRANSFORMER_PARTS:
            table[f"{diffusers_prefix}.transformer_blocks.{t}.{part}"] = f"{ldm_prefix}.transformer_blocks.{t}.{part}"


def unet_to_diffusers(unet_config: dict) -> dict[str, str]:
    """diffusers parameter name -> LDM parameter name (without ``diffusion_model.``); {} for a
    config that is not an LDM UNet. ``transformer_depth`` lists the down path's res blocks in order,
    ``transformer_depth_output`` the up path's, consumed from the end (deepest level first)."""
    if "num_res_blocks" not in unet_config:
        return {}
    res_blocks = list(unet_config["num_res_blocks"])
    down_depth = list(unet_config["transformer_depth"])
    up_depth = list(unet_config["transformer_depth_output"])
    levels = len(unet_config["channel_mult"])
    table: dict[str, str] = {}
    block = 1
    for level in range(levels):
        for i in range(res_blocks[level]):
            _resnet(table, f"down_blocks.{level}.resnets.{i}", f"input_blocks.{block}.0")
            depth = down_depth.pop(0)
            if depth:
                _attention(table, f"down_blocks.{level}.attentions.{i}", f"input_blocks.{block}.1", depth)
            block += 1
        if level < levels - 1:
            for p in ("weight", "bias"):
                table[f"down_blocks.{level}.downsamplers.0.conv.{p}"] = f"input_blocks.{block}.0.op.{p}"
            block += 1
    _resnet(table, "mid_block.resnets.0", "middle_block.0")
    _attention(table, "mid_block.attentions.0", "middle_block.1", unet_config.get("transformer_depth_middle", 1))
    _resnet(table, "mid_block.resnets.1", "middle_block.2")
    block = 0
    for level, n_res in enumerate(reversed(res_blocks)):
        for i in range(n_res + 1):
            _resnet(table, f"up_blocks.{level}.resnets.{i}", f"output_blocks.{block}.0")
            depth = up_depth.pop()
            sub = 1
            if depth:
                _attention(table, f"up_blocks.{level}.attentions.{i}", f"output_blocks.{block}.1", depth)
                sub = 2
            if i == n_res and level < levels - 1:
                for p in ("weight", "bias"):
                    table[f"up_blocks.{level}.upsamplers.0.conv.{p}"] = f"output_blocks.{block}.{sub}.conv.{p}"
            block += 1
    for d, l in _BASIC.items():
        for p in ("weight", "bias"):
            table[f"{d}.{p}"] = f"{l}.{p}"
    return table
