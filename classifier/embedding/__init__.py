"""Text embeddings: the embedder backends and vector cache, and the e5 model-format conversion."""
