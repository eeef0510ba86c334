"""Deployable services: gateway, learner, rollout, reward."""
