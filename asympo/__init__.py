"""asympo: asynchronous RL post-training with current-policy-only ASymPO losses."""

__version__ = "0.1.0"
