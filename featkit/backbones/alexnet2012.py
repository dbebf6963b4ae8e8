"""The original AlexNet (Krizhevsky, Sutskever & Hinton 2012) in one tower: 96-256-384-384-256 with LRN.

torchvision's ``alexnet`` is the later "one weird trick" variant (64-192-384-256-256, no LRN, padded conv1).
This is the network of the 2012 paper with its two GPU towers merged into one, laid out like torchvision's
AlexNet (``features``, ``avgpool``, ``classifier``) so its taps read the same. There are no published weights
for it in torchvision: it runs with ``--weights random`` or a user's file.
"""

from __future__ import annotations

import torch
from torch import nn

from featkit.backbones.alexnet import CLASSIFIER_TAPS
from featkit.backbones.spec import BackboneSpec, TapSpec, conv_out

INPUT_SIZE = 227  # the paper says 224, but 11×11 stride-4 conv1 only gives 55×55 from 227
RESIZE_SIZE = 256  # images were rescaled to 256×256 before cropping 227×227
MIN_INPUT_SIZE = 67  # pool5 needs a 3×3 map ← pool2 input 7 ← pool1 input 15 ← conv1 input 4·14 + 11


def _lrn() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)  # paper §3.3: n=5, α=1e-4, β=0.75, k=2


class AlexNet2012(nn.Module):
    """Single-tower AlexNet of the 2012 paper; ReLU, then LRN, then max pool after conv1 and conv2 (§3.3–3.4).

    Caffe's "CaffeNet" reference model pools before normalising; output shapes are the same either way.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=11, stride=4),
            nn.ReLU(inplace=True),
            _lrn(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(96, 256, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            _lrn(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))  # as torchvision's: other input sizes still reach fc6
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def alexnet2012_spec(size: int = INPUT_SIZE) -> BackboneSpec:
    """Tap table at a square input of ``size`` pixels (``size`` ≥ 67)."""
    if size < MIN_INPUT_SIZE:
        raise ValueError(f"alexnet2012 needs inputs of at least {MIN_INPUT_SIZE} pixels (conv1 is unpadded); "
                         f"got {size}")
    c1 = conv_out(size, 11, 4)  # 55
    p1 = conv_out(c1, 3, 2)  # 27
    p2 = conv_out(p1, 3, 2)  # 13
    p5 = conv_out(p2, 3, 2)  # 6
    taps = [
        TapSpec("conv1_pre", "features.0", (96, c1, c1), note="conv output, before ReLU"),
        TapSpec("conv1", "features.1", (96, c1, c1), note="post-ReLU"),
        TapSpec("norm1", "features.2", (96, c1, c1), note="local response normalisation"),
        TapSpec("pool1", "features.3", (96, p1, p1), note="max pool"),
        TapSpec("conv2_pre", "features.4", (256, p1, p1), note="conv output, before ReLU"),
        TapSpec("conv2", "features.5", (256, p1, p1), note="post-ReLU"),
        TapSpec("norm2", "features.6", (256, p1, p1), note="local response normalisation"),
        TapSpec("pool2", "features.7", (256, p2, p2), note="max pool"),
    ]
    for name, idx, ch in (("conv3", 8, 384), ("conv4", 10, 384), ("conv5", 12, 256)):
        taps.append(TapSpec(f"{name}_pre", f"features.{idx}", (ch, p2, p2), note="conv output, before ReLU"))
        taps.append(TapSpec(name, f"features.{idx + 1}", (ch, p2, p2), note="post-ReLU"))
    taps += [TapSpec("pool5", "features.14", (256, p5, p5), note="max pool, 9216 values flattened at 227"),
             *CLASSIFIER_TAPS]
    return BackboneSpec(
        name="alexnet2012",
        family="alexnet",
        taps=tuple(taps),
        default_tap="fc7",
        input_size=size,
        logits_module="classifier.6",
        description="AlexNet as in Krizhevsky et al. 2012 (96-256-384-384-256, LRN; one tower)",
        resize_size=round(size * RESIZE_SIZE / INPUT_SIZE),
    )
