"""VGG-11/13/16/19 and their batch-norm variants: taps named conv{block}_{i}, pool1..5, fc6..fc8."""

from __future__ import annotations

from featkit.backbones.spec import BackboneSpec, TapSpec

# Layer plans from Simonyan & Zisserman (2014), table 1; the same as torchvision's `cfgs`.
PLANS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def vgg_spec(name: str, size: int = 224) -> BackboneSpec:
    """Tap table for ``vgg11``..``vgg19`` and ``*_bn``: walk the plan the way torchvision builds `features`."""
    base, bn = name.removesuffix("_bn"), name.endswith("_bn")
    taps: list[TapSpec] = []
    idx, block, conv_in_block, spatial, channels = 0, 1, 0, size, 3
    for item in PLANS[base]:
        if item == "M":
            spatial //= 2
            taps.append(TapSpec(f"pool{block}", f"features.{idx}", (channels, spatial, spatial), note="max pool"))
            idx, block, conv_in_block = idx + 1, block + 1, 0
            continue
        channels, conv_in_block = int(item), conv_in_block + 1
        tap = f"conv{block}_{conv_in_block}"
        pre_idx = idx + 1 if bn else idx  # with BN, "_pre" is the normalised conv output
        taps.append(TapSpec(f"{tap}_pre", f"features.{pre_idx}", (channels, spatial, spatial), note="before ReLU"))
        relu_idx = idx + (2 if bn else 1)
        taps.append(TapSpec(tap, f"features.{relu_idx}", (channels, spatial, spatial), note="post-ReLU"))
        idx = relu_idx + 1
    taps += [
        TapSpec("fc6_pre", "classifier.0", (4096,), note="Linear output, before ReLU"),
        TapSpec("fc6", "classifier.1", (4096,), note="post-ReLU"),
        TapSpec("fc7_pre", "classifier.3", (4096,), note="Linear output, before ReLU"),
        TapSpec("fc7", "classifier.4", (4096,), aliases=("penultimate",), note="post-ReLU (Caffe convention)"),
        TapSpec("fc8", "classifier.6", (1000,), aliases=("logits",), note="class scores"),
    ]
    depth = base.removeprefix("vgg")
    return BackboneSpec(
        name=name,
        family="vgg",
        taps=tuple(taps),
        default_tap="fc7",
        input_size=size,
        logits_module="classifier.6",
        description=f"VGG-{depth}{' with batch norm' if bn else ''} (Simonyan & Zisserman 2014)",
    )
