"""The package's shape: no import cycles, small modules and classes, one constraint table each,
classifier and regressor in step, and families registered as adapters."""

import ast
import inspect
import pathlib

import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import check_param_validation

import sktransfer
from sktransfer import (
    FineTuneClassifier,
    FineTuneRegressor,
    PretrainedFeatureExtractor,
    load_backbone,
)
from sktransfer.backbones._registry import Family, families, family, register_family

PACKAGE = pathlib.Path(sktransfer.__file__).parent
MAX_MODULE_LINES = 450
MAX_CLASS_LINES = 300


def _module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path):
    """Package modules imported by ``path`` anywhere in it (function bodies included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("sktransfer"):
                for alias in node.names:  # "from . import _chain" imports a module
                    sub = f"{target}.{alias.name}"
                    found.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sktransfer"))
    return found - {name}


def test_no_import_cycles():
    # a module that imports the package itself (``from . import __version__``) closes a cycle
    # through the package's __init__, which imports the estimators
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # the topic subpackages are regular packages whose __init__ imports nothing
    for sub in ("data", "backbones", "training"):
        assert (PACKAGE / sub / "__init__.py").exists() and not graph[f"sktransfer.{sub}"], sub
    # the check sees imports: persistence knows the estimators only by registration
    assert not {"sktransfer._classifier", "sktransfer._regressor", "sktransfer._extractor"} & graph["sktransfer._persistence"]


def test_modules_and_classes_stay_small():
    too_big = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_big.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_big.append(f"{path.name}:{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_big


# ------------------------------------------------------------ parameter tables
@pytest.mark.parametrize("Est", [PretrainedFeatureExtractor, FineTuneClassifier, FineTuneRegressor])
def test_every_parameter_has_a_constraint_and_bad_types_are_refused(Est):
    """scikit-learn's own check: one table entry per parameter, and a clear error
    for a value of the wrong type or out of range, before any work."""
    check_param_validation(Est.__name__, Est())


@pytest.mark.parametrize("params", [
    dict(lr=np.float32(1e-3), reg_lambda=np.float32(0.1), dropout=np.float64(0.1), max_epochs=np.int64(1),
         batch_size=np.int32(16), fusion_alpha=np.float32(0.5), layer_decay=np.float32(0.9),
         validation_fraction=np.float32(0.2), min_steps=np.int64(0), backbone_lr_scale=np.float32(0.5)),
])
def test_numpy_scalars_are_accepted(params):
    X = np.random.RandomState(0).rand(6, 8, 8)
    clf = FineTuneClassifier(image_size=32, freeze_depth="all", random_state=0, **params).fit(X, [0, 1] * 3)
    assert clf.n_epochs_ == 1


@pytest.mark.parametrize("name, value, message", [
    ("layer_decay", True, "'layer_decay' parameter of FineTuneClassifier must be a float in the range (0.0, 1.0] or None. Got True"),
    ("max_epochs", True, "'max_epochs' parameter of FineTuneClassifier must be an int in the range [1, inf). Got True"),
    ("reg_lambda", -0.1, "'reg_lambda' parameter of FineTuneClassifier must be a float in the range [0.0, inf). Got -0.1"),
    ("linear_probe_epochs", 1.5, "'linear_probe_epochs' parameter of FineTuneClassifier must be an int"),
    ("layer", "stage", "'stageK' (the backbone cut after stage K) or None. Got 'stage' instead."),
    ("device", "gpu", "'device' parameter of FineTuneClassifier must be a str among {'auto'} or 'cpu', 'cuda'"),
    ("pixel_range", (1, 0), "'pixel_range' parameter of FineTuneClassifier must be a str among {'auto'} or a pair (lo, hi) with lo < hi"),
])
def test_bad_values_are_named_with_what_they_must_be(name, value, message):
    with pytest.raises(InvalidParameterError) as info:
        FineTuneClassifier(**{name: value}).fit(np.zeros((4, 8, 8)), [0, 1, 0, 1])
    assert message in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


def test_classifier_and_regressor_signatures_agree():
    """Same parameters in the same order with the same defaults, except where a task differs."""
    clf = inspect.signature(FineTuneClassifier.__init__).parameters
    reg = inspect.signature(FineTuneRegressor.__init__).parameters
    only_clf = {"label_smoothing", "class_weight", "missing_label", "adaptation", "adaptation_weight", "teacher",
                "distill_temperature", "distill_weight", "probe_ensemble", "mixup", "test_time_augment"}
    only_reg = {"loss", "huber_delta"}
    # deliberate: dropout 0 before a solved ridge head; no augmentation for targets that crops change
    differ = {"dropout": (0.2, 0.0), "augment": ("default", False)}
    assert set(clf) - set(reg) == only_clf and set(reg) - set(clf) == only_reg
    assert [n for n in clf if n not in only_clf] == [n for n in reg if n not in only_reg]
    for name in set(clf) & set(reg) - {"self"}:
        expected = differ.get(name, (clf[name].default, clf[name].default))
        assert (clf[name].default, reg[name].default) == expected, name
    shared = set(FineTuneClassifier._parameter_constraints) & set(FineTuneRegressor._parameter_constraints)
    assert all(FineTuneClassifier._parameter_constraints[k] is FineTuneRegressor._parameter_constraints[k]
               for k in shared)
    # the base class states no defaults of its own to disagree with
    base = inspect.signature(sktransfer._finetune.BaseFineTune.__init__).parameters
    assert all(p.default is inspect.Parameter.empty for n, p in base.items() if n != "self")


# ------------------------------------------------------------ backbone families
def test_a_family_is_one_registered_adapter():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    class TinyFamily(Family):
        name = "tiny-test"

        def claims(self, name):
            return name == "tiny"

        def load(self, name, weights):
            return sktransfer.Backbone(Tiny(), name="tiny", family=self.name, preprocessing=sktransfer.Preprocessing(image_size=16))

        def forward_features(self, backbone, x):
            return backbone.model.conv(x) * 2

        def stages(self, backbone):
            return [("conv", ["conv.weight", "conv.bias"])]

    register_family(TinyFamily())
    try:
        backbone = load_backbone("tiny")
        x = torch.randn(2, 3, 16, 16)
        torch.testing.assert_close(backbone.forward_features(x), backbone.model.conv(x) * 2)
        assert backbone.stages == [("conv", ["conv.weight", "conv.bias"])]
        Z = PretrainedFeatureExtractor(backbone="tiny", layer=None, cache=False).fit(np.zeros((2, 16, 16))).transform(
            np.random.RandomState(0).rand(2, 16, 16))
        assert Z.shape == (2, 4)
    finally:
        sktransfer.backbones._registry._FAMILIES.pop("tiny-test")
    assert "tiny-test" not in [f.name for f in families()]
    with pytest.raises(ValueError, match="Unknown backbone family 'tiny-test'"):
        family("tiny-test")


def test_every_built_in_family_is_registered():
    assert {"timm", "torchvision", "tv_vit", "prelogits", "module", "chain"} <= {f.name for f in families()}


def test_one_digest_for_cache_keys_and_checkpoint_names():
    """Shapes and dtypes count, and bf16 weights (which numpy cannot hold) digest too."""
    from sktransfer._digest import state_digest
    from sktransfer.training._checkpoint import _describe

    wide, tall = torch.nn.Linear(4, 2, bias=False), torch.nn.Linear(2, 4, bias=False)
    with torch.no_grad():
        tall.weight.copy_(wide.weight.reshape(4, 2))  # the same bytes, another shape
    assert state_digest(wide) != state_digest(tall)
    half = torch.nn.Linear(4, 2).to(torch.bfloat16)
    assert _describe(half) == state_digest(half) != state_digest(torch.nn.Linear(4, 2).to(torch.bfloat16))
