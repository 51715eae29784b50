"""Evaluation: construction score, benchmark loaders, jailbreak ASR."""
