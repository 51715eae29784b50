"""LLM backends behind one interface (`LLMClient`), plus the call cache and the role service."""
