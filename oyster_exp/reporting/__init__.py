"""Reports, plots and the paper's published numbers."""
