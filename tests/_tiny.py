"""Small stand-ins for the Trainer's tests: a one-convolution backbone and indexed images."""

import numpy as np
import torch


class TinyConv(torch.nn.Module):
    def __init__(self, channels=8):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, channels, 3)

    def forward(self, x):
        return self.conv(x)


class IndexedImages:
    """Prepared images served by index, as ``PreparedImages`` serves them."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def batch(self, indices):
        return self.x[torch.as_tensor(np.asarray(indices))]
