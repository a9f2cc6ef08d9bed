import copy

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import (
    Backbone,
    FineTuneClassifier,
    PretrainedFeatureExtractor,
    WeightsNotFoundError,
    load_backbone,
)
from sktransfer.data._preprocessing import prepare_batch


def test_embedded_weights_give_right_imagenet_classes(photos, empty_caches):
    """Offline, empty torch cache: the embedded Lite0 weights are real ImageNet weights."""
    images = [photos["chelsea"], photos["coffee"], photos["rocket"]]
    logits = PretrainedFeatureExtractor(layer="logits").fit(images).transform(images)
    assert logits.shape == (3, 1000)
    top1 = logits.argmax(axis=1)
    assert 281 <= top1[0] <= 285  # a cat
    assert top1[1] == 967  # espresso
    assert top1[2] in (657, 744)  # missile / projectile


def test_lite0_stages_cover_the_feature_path():
    backbone = load_backbone("efficientnet_lite0", weights=None)
    names = [name for name, _ in backbone.stages]
    assert names[0] == "conv_stem+bn1" and len(names) == 8
    staged = {p for _, params in backbone.stages for p in params}
    head = set(backbone.head_parameter_names())
    assert head == {"classifier.weight", "classifier.bias"}
    assert staged | head == {n for n, _ in backbone.model.named_parameters()}


@pytest.mark.parametrize(
    "name, n_stages, dim",
    [
        ("resnet18", 5, 512),
        ("mobilenet_v3_small", 13, 576),
        ("convnext_tiny", 8, 768),
        ("vgg11", 8, 512),
        ("regnet_y_400mf", 5, 440),
        ("timm/resnet18", 5, 512),
        ("timm/mobilenetv3_small_050", 7, 288),
    ],
)
def test_named_backbones_without_weights(name, n_stages, dim, rng):
    X = rng.integers(0, 255, size=(3, 40, 40, 3), dtype=np.uint8)
    ext = PretrainedFeatureExtractor(name, weights=None, image_size=64, layer=None).fit(X)
    Z = ext.transform(X)
    assert Z.shape == (3, dim) and Z.dtype == np.float32
    assert len(ext.backbone_.stages) == n_stages
    # the embedding is the spatial mean of the last feature map of the prepared images
    x = prepare_batch(torch.from_numpy(X).permute(0, 3, 1, 2).float() / 255, ext.preprocessing_, torch.device("cpu"))
    with torch.inference_mode():
        fmap = ext.backbone_.forward_features(x)
    assert fmap.ndim == 4 and fmap.shape[1] == dim
    np.testing.assert_allclose(Z, fmap.mean((2, 3)).numpy(), rtol=1e-4, atol=1e-5)
    # each stage is a real part of the network: freezing them all leaves only the head
    params = {n for _, ps in ext.backbone_.stages for n in ps}
    assert params.isdisjoint(ext.backbone_.head_parameter_names())


def test_vit_tokens_and_class_token_pooling(rng):
    X = rng.random((2, 224, 224, 3), dtype=np.float32)
    ext = PretrainedFeatureExtractor("vit_b_16", weights=None, pooling="token", batch_size=2).fit(X)
    Z = ext.transform(X)
    assert Z.shape == (2, 768)
    # token pooling = the class token the torchvision head classifies
    with torch.inference_mode():
        x = (torch.from_numpy(X).permute(0, 3, 1, 2) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
            / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        m = ext.backbone_.model
        tokens = m.encoder(torch.cat([m.class_token.expand(2, -1, -1), m._process_input(x)], 1))
        logits_from_cls = m.heads(tokens[:, 0])
        np.testing.assert_allclose(Z, tokens[:, 0].numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(m(x).numpy(), logits_from_cls.numpy(), rtol=1e-4, atol=1e-4)
    assert len(ext.backbone_.stages) == 14


def test_timm_vit_with_weights_none(rng):
    X = rng.random((2, 32, 32), dtype=np.float32)
    ext = PretrainedFeatureExtractor("timm/vit_tiny_patch16_224", weights=None, image_size=224).fit(X)
    assert ext.transform(X).shape == (2, 192)


def test_missing_torchvision_weights_message(empty_caches):
    with pytest.raises(WeightsNotFoundError) as info:
        load_backbone("resnet18", weights="DEFAULT")
    msg = str(info.value)
    assert "resnet18-f37072fd.pth" in msg
    assert str(empty_caches / "torch" / "hub" / "checkpoints") in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert "weights=None" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_missing_timm_weights_message(empty_caches):
    with pytest.raises(WeightsNotFoundError, match=r"not in the local cache.*timm/resnet18\.a1_in1k.*HF_HOME"):
        load_backbone("timm/resnet18", weights="DEFAULT")


def test_torchvision_weights_resolve_from_local_cache(empty_caches, rng):
    """A file in torch-hub's cache folder is found and loaded without network."""
    import torchvision

    source = torchvision.models.resnet18(weights=None)
    folder = empty_caches / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(source.state_dict(), folder / "resnet18-f37072fd.pth")
    backbone = load_backbone("resnet18", weights="IMAGENET1K_V1")
    for a, b in zip(source.state_dict().values(), backbone.model.state_dict().values()):
        assert torch.equal(a, b)
    assert backbone.preprocessing.image_size == 224
    with pytest.raises(ValueError, match="Unknown weights 'IMAGENET1K_V9'.*IMAGENET1K_V1"):
        load_backbone("resnet18", weights="IMAGENET1K_V9")


def test_weights_from_a_state_dict_file(tmp_path, rng):
    import torchvision

    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    X = rng.random((2, 32, 32, 3), dtype=np.float32)
    from_file = PretrainedFeatureExtractor("resnet18", weights=str(path), image_size=32).fit(X)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        source.eval()
        assert torch.allclose(from_file.backbone_.model(x), source(x), atol=1e-5)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match="does not fit ResNet"):
        load_backbone("resnet18", weights=str(tmp_path / "other.pth"))
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "ten.pth")
    with pytest.raises(ValueError, match=r"fc.weight: \(10, 512\) in the file, \(1000, 512\) in the model"):
        load_backbone("resnet18", weights=str(tmp_path / "ten.pth"))


def test_weights_file_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": object()}, path)  # needs pickle, refused by weights_only=True
    with pytest.raises(ValueError, match="weights_only=True"):
        load_backbone("resnet18", weights=str(path))


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet19'.*resnet18"):
        load_backbone("resnet19")
    with pytest.raises(ValueError, match="Unknown timm model"):
        load_backbone("timm/not_a_model_at_all", weights=None)
    with pytest.raises(TypeError, match="backbone must be"):
        load_backbone(42)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 4)

    def forward_features(self, x):
        return self.block(self.stem(x))

    def forward(self, x):
        return self.fc(self.forward_features(x).mean((2, 3)))


def test_user_module_backbone_is_copied_and_used(rng):
    net = TinyNet().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    X = rng.random((3, 16, 16), dtype=np.float32)
    ext = PretrainedFeatureExtractor(
        net, image_size=16, layer=None, preprocessing={"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    ).fit(X)
    assert ext.backbone_.model is not net
    assert [s for s, _ in ext.backbone_.stages] == ["stem", "block", "fc"]
    Z = ext.transform(X)
    x = (torch.from_numpy(X)[:, None].expand(-1, 3, -1, -1) - 0.5) / 0.5
    with torch.inference_mode():
        expected = net.forward_features(x).mean((2, 3)).numpy()
    np.testing.assert_allclose(Z, expected, rtol=1e-5, atol=1e-5)
    logits = PretrainedFeatureExtractor(net, layer="logits", image_size=16).fit(X).transform(X)
    assert logits.shape == (3, 4)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


def test_backbone_is_a_module():
    backbone = load_backbone("efficientnet_lite0", weights=None)
    assert isinstance(backbone, Backbone) and isinstance(backbone, nn.Module)
    assert backbone.preprocessing.interpolation == "bicubic"


# -- depthwise convolutions on 1x1 maps --------------------------------------------
@pytest.mark.parametrize("kernel,stride", [(3, 1), (5, 1), (5, 2), (3, 2)])
def test_fast_depthwise_conv_equals_conv2d(kernel, stride):
    from sktransfer.backbones._fast_layers import DepthwiseConv2d, use_fast_layers

    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, kernel, stride=stride, padding=kernel // 2, groups=16, bias=False)
    fast = use_fast_layers(copy.deepcopy(conv))
    assert type(fast) is DepthwiseConv2d and fast.state_dict().keys() == conv.state_dict().keys()
    for size in (1, 2, 5):  # 1x1 takes the short cut; the others are nn.Conv2d's own code
        x = torch.randn(4, 16, size, size, requires_grad=True)
        x2 = x.detach().clone().requires_grad_(True)
        out, out2 = conv(x), fast(x2)
        assert torch.equal(out, out2)
        g = torch.randn_like(out)
        out.backward(g)
        out2.backward(g)
        torch.testing.assert_close(x2.grad, x.grad, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(fast.weight.grad, conv.weight.grad, rtol=1e-6, atol=1e-7)
        conv.zero_grad()
        fast.zero_grad()


def test_only_plain_depthwise_convolutions_are_swapped():
    from sktransfer.backbones._fast_layers import DepthwiseConv2d, use_fast_layers

    model = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, bias=False),  # dense
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # with a bias
        nn.Conv2d(8, 8, 3, padding=2, groups=8, bias=False),  # over-padded: 1x1 in, 3x3 out
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
    )
    use_fast_layers(model)
    assert [type(m) for m in model] == [nn.Conv2d, nn.Conv2d, DepthwiseConv2d, DepthwiseConv2d]
    x = torch.randn(2, 8, 1, 1)
    assert model[2](x).shape[-2:] == (3, 3)  # the short cut is not taken
    assert torch.equal(model[2](x), nn.Conv2d.forward(model[2], x))


def test_lite0_uses_fast_depthwise_and_leaves_user_modules_alone():
    from sktransfer.backbones._fast_layers import DepthwiseConv2d

    backbone = load_backbone("efficientnet_lite0")
    fast = [m for m in backbone.model.modules() if type(m) is DepthwiseConv2d]
    assert len(fast) == 16  # one per inverted-residual block
    plain = copy.deepcopy(backbone.model).eval()
    for m in plain.modules():
        if type(m) is DepthwiseConv2d:
            m.__class__ = nn.Conv2d
    x = torch.rand(3, 3, 32, 32)  # the last stages run on 1x1 maps
    with torch.no_grad():
        assert torch.equal(backbone.model.eval().forward_features(x), plain.forward_features(x))
    user = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, groups=3), nn.Flatten())
    load_backbone(user)
    assert type(user[0]) is nn.Conv2d


def test_named_backbones_are_built_once_per_process_and_copied(monkeypatch, fresh_builds):
    """A grid search builds the same backbone for every fit: the second load copies the first."""
    from sktransfer.backbones import _loading

    built = []
    real = _loading._build_named
    monkeypatch.setattr(_loading, "_build_named", lambda name, weights: built.append(name) or real(name, weights))
    first = load_backbone()
    second = load_backbone()
    assert built == ["efficientnet_lite0"]
    assert second.model is not first.model
    with torch.no_grad():  # a copy: changing one leaves the other, and the next load, as built
        first.model.conv_stem.weight.mul_(2)
    third = load_backbone()
    torch.testing.assert_close(second.model.conv_stem.weight, third.model.conv_stem.weight)
    assert not torch.equal(first.model.conv_stem.weight, third.model.conv_stem.weight)
    load_backbone(weights=None)  # other weights: another build
    assert built == ["efficientnet_lite0", "efficientnet_lite0"]


def test_loading_a_backbone_leaves_the_random_stream_alone(fresh_builds):
    """Built or copied, a load draws no random numbers: fits with one random_state stay equal."""
    from sktransfer.backbones import _loading

    expected = torch.manual_seed(0) and torch.rand(3)
    for _ in ("built", "copied"):
        torch.manual_seed(0)
        load_backbone("resnet18", weights=None)
        assert torch.equal(torch.rand(3), expected)
    assert len(_loading._BUILT) == 1


def test_a_timm_weights_tag_is_given_once():
    with pytest.raises(ValueError, match=r"carries its weights tag 'a1_in1k' and weights='tv_in1k'"):
        load_backbone("timm/resnet18.a1_in1k", "tv_in1k")


def test_a_module_refuses_a_weights_name_it_would_ignore():
    module = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match=r"weights='IMAGENET1K_V2' names weights of a registered model"):
        load_backbone(module, "IMAGENET1K_V2")
    assert load_backbone(module, "DEFAULT").weights == "as given"


@pytest.mark.parametrize("Est", [PretrainedFeatureExtractor, FineTuneClassifier])
def test_a_network_that_cannot_run_at_the_image_size_says_so_at_fit(Est):
    X, y = np.zeros((4, 16, 16)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"'vit_b_16' failed on a probe image of 32x32 pixels .*its native size is 224"):
        Est("vit_b_16", weights=None, image_size=32).fit(X, y)
