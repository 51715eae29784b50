"""Preference training (ORPO, SFT) as a Lightning module."""
