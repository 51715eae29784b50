"""Base models: the embedded SmolLM2, the in-process tiny random model, local paths."""
