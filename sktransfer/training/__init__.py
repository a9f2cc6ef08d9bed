"""Fine-tuning: the Trainer, optimisers and schedules, objectives, penalties, freezing and checkpoints.

Private: import from the modules (see docs/architecture.md); this file imports nothing.
"""
