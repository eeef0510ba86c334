"""asympo: asynchronous RL post-training with current-policy-only ASymPO losses."""

import os

# torch's CPU kernels run on OpenMP threads that, by default, spin while they wait for work and so hold
# their cores from every other process. On CPU the stack's services share few cores: with sleeping
# threads the demo pipeline ran ~15% faster on 2 cores, and a tiny-model build that takes 12 s took
# over 280 s beside two busy loops. libgomp reads this once, when torch loads: it is set here, before
# any asympo module imports torch, and a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
