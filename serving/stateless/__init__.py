"""Stateless models (embeddings, classifiers): dynamic batching and padding, no KV cache."""
