"""Our engine for decoder-only transformers: paged KV cache, batched mixed prefill/decode steps."""
