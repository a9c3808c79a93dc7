"""SC-DPO training of safety LoRAs (docs/method.md), and the baselines that share its code path.

Public API:

* :func:`sc_dpo_loss` (pure loss; ``λ=0, γ=0`` is Diffusion-DPO) and :class:`ScDpoDiagnostics`;
* :class:`TrainConfig`, :func:`load_train_config`, :func:`train_lora` ``(config, model=None,
  dataset=None) -> Path`` (kohya LoRA + resolved config + TensorBoard logs);
* SafetyDPO: :func:`train_safetydpo_experts` and :func:`merge_loras` (``average`` | ``activation``);
* :class:`ToyOraclePairs`: preference pairs rendered from the toy world (tests, quick runs).
"""

from .config import TrainConfig, load_train_config, save_train_config
from .loss import ScDpoDiagnostics, sc_dpo_loss
from .pairs import ToyOraclePairs, select_pairs
from .train import summary_of, train_lora

__all__ = [
    "ScDpoDiagnostics",
    "ToyOraclePairs",
    "TrainConfig",
    "load_train_config",
    "save_train_config",
    "sc_dpo_loss",
    "select_pairs",
    "summary_of",
    "train_lora",
]
