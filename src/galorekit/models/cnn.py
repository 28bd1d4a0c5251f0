"""A small convolutional classifier (torch only): the CNN of the model-family benchmark and of
``galore memory --model cnn_digits``, where GaLore projects convolution kernels (as their
out × in·kh·kw unfolding) instead of linear layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class CNNConfig:
    """Shape of :class:`SmallCNN`. ``hidden_size`` (the widest layer's channels) is what the
    default GaLore/adapter rank (``hidden_size // 4``) reads."""

    in_channels: int = 1
    width: int = 64
    image_size: int = 8
    num_labels: int = 10
    model_type: str = "cnn"

    def __post_init__(self) -> None:
        for name in ("in_channels", "width", "image_size", "num_labels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"cnn config: {name} must be a positive integer, got {value!r}")
        if self.image_size % 4 or self.width % 2:
            raise ValueError(
                f"cnn config: image_size must be a multiple of 4 (two 2×2 poolings) and width "
                f"even, got image_size={self.image_size}, width={self.width}"
            )

    @property
    def hidden_size(self) -> int:
        return self.width


@dataclass
class CNNOutput:
    """What :meth:`SmallCNN.forward` returns: ``loss`` (None without labels) and ``logits``."""

    loss: torch.Tensor | None
    logits: torch.Tensor


class SmallCNN(nn.Module):
    """conv3×3(in→w/2) → conv3×3(w/2→w) → pool → conv3×3(w→w) → pool → linear classifier.

    ``base_model`` is the convolution stack (as a transformers model's backbone is), so the
    default targets of ``galorekit.optim.targets`` are its kernels; the classifier is the head.
    """

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.features = nn.Sequential(
            nn.Conv2d(config.in_channels, w // 2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w // 2, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(w * (config.image_size // 4) ** 2, config.num_labels)

    @property
    def base_model(self) -> nn.Module:
        return self.features

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> CNNOutput:
        logits = self.classifier(self.features(pixel_values).flatten(1))
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return CNNOutput(loss, logits)
