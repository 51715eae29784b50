"""Preference training (ORPO, SFT) with Lightning.

`losses` (pure tensor functions, TRL-parity tested), `data` (tokenisation, batching, the
DataModule; `token_cache` keeps tokenised pairs in Arrow files), `models` (loading, LoRA / QLoRA,
merged export), `module` (the LightningModule), `schedules` (lr warm-up and decay), `callbacks`
(atomic last checkpoint, W&B run id, sample table), `strategies` (FSDP from config), `run`
(build the Trainer, resume, fit, export). Submodules are imported explicitly so that importing this
package stays cheap.
"""
