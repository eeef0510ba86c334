"""The ASymPO algorithm core: advantages, current-policy token log-probs, losses. Pure torch, no I/O."""

from asympo.algo.advantages import ADV_NORMS, gpg_advantages, group_advantages
from asympo.algo.logprobs import token_logprobs
from asympo.algo.losses import METHOD_OPTIONS, METHODS, policy_loss
from asympo.algo.update_shares import negative_part, update_shares

__all__ = [
    "ADV_NORMS",
    "METHODS",
    "METHOD_OPTIONS",
    "gpg_advantages",
    "group_advantages",
    "negative_part",
    "policy_loss",
    "token_logprobs",
    "update_shares",
]
