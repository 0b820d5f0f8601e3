"""Slide analysis: tissue, focus, artifacts, stain, verdicts; models and inference backends."""
