"""The rollout service: vLLM generation for prompt groups, scored and published, with hot-reloaded policies."""
