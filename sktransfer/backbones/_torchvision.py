"""torchvision classification models: three families by how the last feature map is reached.

* ``"torchvision"``: the model's top-level children applied in sequence (``_TV_BODIES``);
* ``"tv_vit"``: vision transformers (patch embedding, class token, encoder);
* ``"prelogits"``: any other model, run to the input of its last ``nn.Linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data._preprocessing import Preprocessing
from ._backbone import Backbone, generic_stages, prefix_stages
from ._hooks import record
from ._registry import Family, is_path, register_family
from ._weights import load_file_into, load_state_dict_file, torchvision_checkpoint

# the top-level children whose sequential application gives the last feature map;
# models not listed fall back to "prelogits"
_TV_BODIES = {
    "resnet": ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
    "resnext": ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
    "wide_resnet": ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
    "regnet": ("stem", "trunk_output"),
    "shufflenet": ("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"),
    "mnasnet": ("layers",),
    "densenet": ("features",),
    "swin": ("features", "norm", "permute"),
    "efficientnet": ("features",),
    "mobilenet": ("features",),
    "convnext": ("features",),
    "vgg": ("features",),
    "alexnet": ("features",),
    "squeezenet": ("features",),
}


class TorchvisionFamily(Family):
    name = "torchvision"

    def claims(self, name):
        import torchvision

        return name in torchvision.models.list_models(module=torchvision.models)

    def load(self, name, weights):
        return _torchvision(name, weights)

    def forward_features(self, backbone, x):
        for child in backbone.body:
            x = getattr(backbone.model, child)(x)
        return F.relu(x) if backbone.name.startswith("densenet") else x

    def names(self):
        import torchvision

        return torchvision.models.list_models(module=torchvision.models)


class VisionTransformerFamily(Family):
    name = "tv_vit"

    def forward_features(self, backbone, x):
        m = backbone.model
        x = m._process_input(x)
        cls = m.class_token.expand(x.shape[0], -1, -1)
        return m.encoder(torch.cat([cls, x], dim=1))

    def stages(self, backbone):
        model = backbone.model
        return prefix_stages(
            model,
            [("stem", ["class_token", "conv_proj", "encoder.pos_embedding"])]
            + [(f"encoder.layers.{n}", [f"encoder.layers.{n}"]) for n, _ in model.encoder.layers.named_children()]
            + [("encoder.ln", ["encoder.ln"])],
        )


class PrelogitsFamily(Family):
    name = "prelogits"

    def forward_features(self, backbone, x):
        model = backbone.model
        linears = _linears(model)
        if not linears:
            return model(x)
        events = record(lambda: model(x), {"classifier": linears[-1][1]}, inputs=True, stop_when_done=True)
        return events[0][1]

    def stages(self, backbone):
        # the classifier is the last group holding the final Linear
        linears = _linears(backbone.model)
        return generic_stages(backbone, exclude=[linears[-1][0]] if linears else ())


def _linears(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _torchvision(name, weights):
    import torchvision

    if weights is None or is_path(weights):
        model = torchvision.models.get_model(name, weights=None)
        desc = load_file_into(model, weights) if weights is not None else None
        weights_enum = torchvision.models.get_model_weights(name).DEFAULT
    else:
        enum_cls = torchvision.models.get_model_weights(name)
        key = str(weights).split(".")[-1]
        try:
            weights_enum = enum_cls[key] if key != "DEFAULT" else enum_cls.DEFAULT
        except KeyError:
            raise ValueError(
                f"Unknown weights {weights!r} for torchvision model {name!r}; valid: "
                f"{['DEFAULT'] + [w.name for w in enum_cls]}, None or a path."
            ) from None
        path = torchvision_checkpoint(name, weights_enum)
        model = torchvision.models.get_model(name, weights=None)
        if len(weights_enum.meta.get("categories") or []) not in (0, 1000):
            model = torchvision.models.get_model(
                name, weights=None, num_classes=len(weights_enum.meta["categories"])
            )
        model.load_state_dict(load_state_dict_file(path))
        desc = str(weights_enum)
    transforms = weights_enum.transforms()
    spec = Preprocessing(
        image_size=int(transforms.crop_size[0]),
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        interpolation=transforms.interpolation.value,
    )
    if name.startswith("vit_"):
        return Backbone(model, name=name, family="tv_vit", preprocessing=spec, weights=desc)
    family_key = next((k for k in _TV_BODIES if name.startswith(k)), None)
    if family_key is None:
        return Backbone(model, name=name, family="prelogits", preprocessing=spec, weights=desc)
    return Backbone(
        model, name=name, family="torchvision", body=_TV_BODIES[family_key],
        preprocessing=spec, weights=desc,
    )


register_family(TorchvisionFamily())
register_family(VisionTransformerFamily())
register_family(PrelogitsFamily())
