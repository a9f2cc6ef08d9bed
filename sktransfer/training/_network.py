"""The network a fine-tuned estimator trains: backbone -> pooling -> dropout -> new head."""

from __future__ import annotations

from torch import nn

from ..backbones._pooling import pool


class TransferNet(nn.Module):
    """A pretrained :class:`~sktransfer.Backbone` with a new linear head.

    Parameters
    ----------
    backbone : Backbone
    n_features : int
        Width of the pooled backbone features.
    n_outputs : int
        Width of the new head (number of classes).
    pooling : str or None
    dropout : float
        Dropout before the head.
    """

    def __init__(self, backbone, n_features, n_outputs, pooling="avg", dropout=0.0):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(n_features, n_outputs)

    def features(self, x):
        return pool(self.backbone.forward_features(x), self.pooling)

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))
