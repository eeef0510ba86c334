"""The reward-scoring service: verifiers behind gRPC `RewardService.Score`, and a client for it.

Import `services.reward.client` for the client alone; it does not load the verifiers (sympy).
"""
