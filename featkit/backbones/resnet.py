"""ResNet-18/34/50/101/152 taps: stem, stages layer1..4 (aliases res2..res5, conv2_x..conv5_x), avgpool, fc."""

from __future__ import annotations

from featkit.backbones.spec import BackboneSpec, TapSpec

DEPTHS = (18, 34, 50, 101, 152)


def resnet_spec(depth: int, size: int = 224) -> BackboneSpec:
    expansion = 1 if depth < 50 else 4
    s = size // 2  # 7×7 stride-2 stem
    taps = [
        TapSpec("conv1", "relu", (64, s, s), note="stem conv + BN + ReLU"),
        TapSpec("pool1", "maxpool", (64, s // 2, s // 2), note="stem max pool"),
    ]
    spatial = s // 2
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        if stage > 1:
            spatial //= 2
        taps.append(
            TapSpec(
                f"layer{stage}",
                f"layer{stage}",
                (width * expansion, spatial, spatial),
                aliases=(f"res{stage + 1}", f"conv{stage + 1}_x"),
                note="stage output (post-ReLU)",
            )
        )
    feat = 512 * expansion
    taps += [
        TapSpec("avgpool", "flatten", (feat,), aliases=("pool5", "penultimate"), note="global average pool"),
        TapSpec("fc", "fc", (1000,), aliases=("fc8", "logits"), note="class scores"),
    ]
    return BackboneSpec(
        name=f"resnet{depth}",
        family="resnet",
        taps=tuple(taps),
        default_tap="avgpool",
        input_size=size,
        logits_module="fc",
        description=f"ResNet-{depth} (He et al. 2015)",
    )
