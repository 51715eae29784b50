"""lm-eval task YAMLs written for oyster-exp; always on lm-eval's task path (see evaluation.benchmarks.capability)."""
