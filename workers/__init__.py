"""Worker processes: fragment loading, the LLM engine with a paged KV cache, batched steps."""
