"""What earlier versions wrote still loads and predicts the same."""

import pathlib
import pickle

import numpy as np

import sktransfer
from sktransfer import FineTuneClassifier, FineTuneRegressor

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def _expected():
    return np.load(FIXTURES / "expected_0.1.npz")


def test_files_saved_by_0_1_load_and_predict_the_same():
    expected = _expected()
    clf = sktransfer.load(FIXTURES / "classifier_0.1.safetensors")
    assert isinstance(clf, FineTuneClassifier) and clf.layer_ == "stage3"
    np.testing.assert_allclose(clf.predict_proba(expected["X"]), expected["proba"], rtol=1e-5, atol=1e-6)
    reg = FineTuneRegressor.load(FIXTURES / "regressor_0.1.safetensors")
    np.testing.assert_allclose(reg.predict(expected["X"]), expected["pred"], rtol=1e-5, atol=1e-6)


def test_pickles_of_0_1_load_through_the_old_module_names():
    """0.1 pickled ``sktransfer._network.TransferNet``, ``sktransfer._backbones.Backbone``...;
    those modules moved, and aliases keep such pickles loading for one release."""
    raw = (FIXTURES / "classifier_0.1.pkl").read_bytes()
    assert b"sktransfer._network" in raw and b"sktransfer._backbones" in raw
    clf = pickle.loads(raw)
    expected = _expected()
    np.testing.assert_allclose(clf.predict_proba(expected["X"]), expected["proba"], rtol=1e-5, atol=1e-6)
    assert type(clf.net_).__module__ == "sktransfer.training._network"
    # and it trains on: the loop, optimizer and loss terms of this version take it over
    clf.set_params(max_epochs=1, warm_start=True).fit(expected["X"], clf.predict(expected["X"]))
    assert clf.n_epochs_ == 2
