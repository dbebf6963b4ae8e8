"""SqueezeNet 1.0 / 1.1 taps: conv1, pools, fire2..fire9, conv10 and the logits."""

from __future__ import annotations

from featkit.backbones.spec import BackboneSpec, TapSpec, conv_out

# Fire module output channels (expand1x1 + expand3x3), fire2..fire9, from Iandola et al. (2016).
FIRE_OUT = (128, 128, 256, 256, 384, 384, 512, 512)

# Position in `features` of each layer, per version: (conv1 stem channels, kernel, [layer kinds]).
LAYOUT = {
    "squeezenet1_0": (96, 7, ["conv", "relu", "pool", "fire", "fire", "fire", "pool",
                              "fire", "fire", "fire", "fire", "pool", "fire"]),
    "squeezenet1_1": (64, 3, ["conv", "relu", "pool", "fire", "fire", "pool",
                              "fire", "fire", "pool", "fire", "fire", "fire", "fire"]),
}


def squeezenet_spec(name: str, size: int = 224) -> BackboneSpec:
    stem_ch, kernel, kinds = LAYOUT[name]
    spatial = conv_out(size, kernel, 2)
    channels = stem_ch
    taps: list[TapSpec] = []
    fire, pool = 0, 0
    for idx, kind in enumerate(kinds):
        node = f"features.{idx}"
        if kind == "conv":
            taps.append(TapSpec("conv1_pre", node, (channels, spatial, spatial), note="before ReLU"))
        elif kind == "relu":
            taps.append(TapSpec("conv1", node, (channels, spatial, spatial), note="post-ReLU"))
        elif kind == "pool":
            pool += 1
            spatial = conv_out(spatial, 3, 2, ceil_mode=True)
            taps.append(TapSpec(f"pool{pool}", node, (channels, spatial, spatial), note="max pool (ceil mode)"))
        else:
            channels = FIRE_OUT[fire]
            fire += 1
            last = fire == len(FIRE_OUT)
            aliases = ("penultimate",) if last else ()
            taps.append(TapSpec(f"fire{fire + 1}", node, (channels, spatial, spatial), aliases=aliases,
                                note="Fire module output"))
    taps += [
        TapSpec("conv10", "classifier.2", (1000, spatial, spatial), note="1×1 class conv, post-ReLU"),
        TapSpec("logits", "flatten", (1000,), aliases=("fc8",), note="class scores (global average of conv10)"),
    ]
    version = name.removeprefix("squeezenet").replace("_", ".")
    return BackboneSpec(
        name=name,
        family="squeezenet",
        taps=tuple(taps),
        default_tap="fire9",
        input_size=size,
        logits_module="classifier.1",
        description=f"SqueezeNet {version} (Iandola et al. 2016)",
    )
