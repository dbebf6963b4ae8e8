"""AlexNet (torchvision's single-tower variant, 64-192-384-256-256) taps, Caffe naming."""

from __future__ import annotations

from featkit.backbones.spec import BackboneSpec, TapSpec, conv_out

# torchvision's AlexNet classifier: Dropout, fc6, ReLU, Dropout, fc7, ReLU, fc8 (alexnet2012 keeps the layout).
CLASSIFIER_TAPS = (
    TapSpec("fc6_pre", "classifier.1", (4096,), note="Linear output, before ReLU"),
    TapSpec("fc6", "classifier.2", (4096,), note="post-ReLU (Caffe fc6)"),
    TapSpec("fc7_pre", "classifier.4", (4096,), note="Linear output, before ReLU"),
    TapSpec("fc7", "classifier.5", (4096,), aliases=("penultimate",), note="post-ReLU (Caffe/DeCAF fc7)"),
    TapSpec("fc8", "classifier.6", (1000,), aliases=("logits",), note="class scores"),
)


def alexnet_spec(size: int = 224) -> BackboneSpec:
    s1 = conv_out(size, 11, 4, 2)  # 55
    p1 = conv_out(s1, 3, 2)  # 27
    p2 = conv_out(p1, 3, 2)  # 13
    p5 = conv_out(p2, 3, 2)  # 6
    convs = [  # (name, conv index in `features`, channels, spatial)
        ("conv1", 0, 64, s1),
        ("conv2", 3, 192, p1),
        ("conv3", 6, 384, p2),
        ("conv4", 8, 256, p2),
        ("conv5", 10, 256, p2),
    ]
    taps: list[TapSpec] = []
    for name, idx, ch, sp in convs:
        taps.append(TapSpec(f"{name}_pre", f"features.{idx}", (ch, sp, sp), note="conv output, before ReLU"))
        taps.append(TapSpec(name, f"features.{idx + 1}", (ch, sp, sp), note="post-ReLU"))
        if name == "conv1":
            taps.append(TapSpec("pool1", "features.2", (64, p1, p1), note="max pool"))
        if name == "conv2":
            taps.append(TapSpec("pool2", "features.5", (192, p2, p2), note="max pool"))
    taps += [TapSpec("pool5", "features.12", (256, p5, p5), note="max pool, 9216 values flattened"), *CLASSIFIER_TAPS]
    return BackboneSpec(
        name="alexnet",
        family="alexnet",
        taps=tuple(taps),
        default_tap="fc7",
        input_size=size,
        logits_module="classifier.6",
        description="AlexNet (Krizhevsky 2012, torchvision's one-tower variant)",
    )
