"""Preference training (ORPO, SFT) with Lightning.

`losses` (pure tensor functions, TRL-parity tested), `data` (tokenisation, batching, the
DataModule), `module` (the LightningModule and its export), `run` (fit + export in one call).
Submodules are imported explicitly so that importing this package stays cheap.
"""
