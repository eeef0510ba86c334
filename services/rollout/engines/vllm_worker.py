"""Code that runs inside vLLM's workers: reloading weights so that tied heads follow, and reading the head.

vLLM mixes `WeightSyncExtension` into its worker class (`worker_extension_cls`), so the engine calls
these methods by name with `collective_rpc`; nothing is pickled across the process boundary.

Why tied heads need help on CPU: vLLM's CPU backend packs every linear weight into a kernel-specific
copy when a layer is processed after loading (`dispatch_cpu_unquantized_gemm` builds `cpu_linear`
around a packed tensor or a oneDNN handle). `reload_weights` re-processes each layer whose tensors the
checkpoint names. A tied `lm_head` is named by none (the checkpoint stores the embedding once), so its
parameter, which *is* the embedding's, receives the new values while its packed copy keeps the old
ones: the model samples from a stale head. Re-running the head's post-load processing rebuilds the
packed copy from the shared parameter. On CUDA the unquantized head multiplies with the shared
parameter itself and its post-load processing does nothing, so the refresh costs nothing there.
"""

from __future__ import annotations

import torch


def _tied_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Modules whose `weight` is the very Parameter of another module (a tied head and its embedding)."""
    owners: dict[int, list[torch.nn.Module]] = {}
    for module in model.modules():
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if isinstance(weight, torch.nn.Parameter):
            owners.setdefault(id(weight), []).append(module)
    return [m for group in owners.values() if len(group) > 1 for m in group]


def refresh_tied_weights(model: torch.nn.Module) -> int:
    """Re-run post-load processing of unquantized tied layers so derived kernel copies follow the weights."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    refreshed = 0
    for module in _tied_modules(model):
        method = getattr(module, "quant_method", None)
        # Quantized methods may not be re-entrant (they replace their parameters); only plain ones are redone.
        if type(method) is UnquantizedEmbeddingMethod:
            method.process_weights_after_loading(module)
            refreshed += 1
    return refreshed


class WeightSyncExtension:
    """Methods added to every vLLM worker; the `asympo_` prefix keeps them clear of vLLM's own names."""

    def asympo_reload(self, weights_path: str, refresh_tied: bool = True) -> int:
        """reload_weights from an HF directory, then refresh tied layers; returns how many were refreshed."""
        self.model_runner.reload_weights(weights_path=weights_path)
        if not refresh_tied:
            return 0
        return refresh_tied_weights(self.model_runner.get_model())

    @torch.no_grad()
    def asympo_head_columns(self, dims: list[int]) -> dict:
        """What the served lm_head computes for one-hot hidden states: its weight columns `dims`, per vocab row.

        A product with a one-hot vector is exact in any dtype, so the caller can compare the result
        with the checkpoint's tensor exactly, whatever the learning rate changed.
        """
        head = self.model_runner.get_model().lm_head
        hidden = head.weight.shape[1] if head.weight.ndim == 2 and head.weight.numel() else head.embedding_dim
        dtype = getattr(self.model_runner, "dtype", None) or head.weight.dtype
        x = torch.zeros(len(dims), hidden, dtype=dtype, device=head.weight.device)
        for row, dim in enumerate(dims):
            x[row, dim] = 1
        logits = head.quant_method.apply(head, x)
        shard = head.shard_indices
        count = shard.org_vocab_end_index - shard.org_vocab_start_index
        return {
            "start": int(shard.org_vocab_start_index),
            "columns": logits[:, :count].float().cpu().tolist(),
            "dtype": str(logits.dtype).removeprefix("torch."),
        }
