"""Changing weights: eps-prediction training from scratch and the fine-tuning baseline."""
