"""Captions: compositions, prompts, captioners and caption evaluation."""
