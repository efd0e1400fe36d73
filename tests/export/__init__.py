"""Tests of jaxmoe.export: Hugging Face families, FP8 checkpoints."""
