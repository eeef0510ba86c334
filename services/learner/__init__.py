"""The learner: FSDP2 training on scored groups with current-policy losses, staleness control, publishing."""
