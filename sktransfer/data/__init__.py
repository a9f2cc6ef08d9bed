"""Inputs to tensors: image sources, preprocessing, batches, augmentation and the embedding cache.

Private: import from the modules (see docs/architecture.md); this file imports nothing.
"""
