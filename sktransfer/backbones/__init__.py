"""Pretrained networks: the family registry, loading, stages, cutting, layer outputs and pooling.

Private: import from the modules (see docs/architecture.md); this file imports nothing.
"""
