"""Model helpers: the tiny CPU model factory, HF generation and current-policy log-probs."""
