"""Tests of jaxmoe.nn: basic layers (RoPE scaling)."""
