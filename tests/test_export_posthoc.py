"""The exported graph's tail: TTA views, the prior correction per member and the temperature, equal to the numpy
path the ensemble stage measured, and the same in plain TensorFlow (no automl) as in Keras."""


import keras
import numpy as np
import pytest

from automl.data import DX_CLASSES, resize_image
from automl.export import assemble, export_model
from automl.posthoc import combine, predict_modes, prior_factor
from automl.trial import predict_proba
from tests.conftest import plain_tensorflow_outputs, tiny_members

# A HAM10000-like training prior; member 1 learnt a uniform mix (class weights), member 2 the prior itself.
PRIOR = np.array([0.03, 0.05, 0.11, 0.01, 0.11, 0.67, 0.02])
FACTORS = [prior_factor(PRIOR, np.full(7, 1 / 7)), prior_factor(PRIOR, PRIOR)]


def test_graph_applies_tta_prior_and_temperature_as_the_numpy_path_does():
    ms = tiny_members()
    model = assemble(ms, [2.0, 1.0], (16, 16), tta="dihedral", prior_factors=FACTORS, temperature=1.7)
    raw = np.random.default_rng(3).integers(0, 256, (3, 45, 60, 3), dtype=np.uint8)
    resized = np.stack([resize_image(image, (16, 16)) for image in raw])
    # What the retrain stage stores for each member, and what the ensemble stage computes from it.
    tta = [predict_modes(lambda x, m=m: predict_proba(m, x), resized, ("dihedral",))["dihedral"] for m in ms]
    expected = combine(tta, [2.0, 1.0], FACTORS, 1.7)
    probs = model(raw).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert not np.allclose(probs, assemble(ms, [2.0, 1.0], (16, 16))(raw).numpy(), atol=1e-3)  # the tail does work
    names = {layer.name for layer in model.layers}
    assert {"tta_views", "member_1_tta", "member_2_prior", "ensemble", "temperature"} <= names
    with pytest.raises(ValueError, match="needs a square input"):
        assemble(ms, [1.0, 1.0], (12, 16), tta="dihedral")


def test_dihedral_prior_temperature_graph_reloads_in_plain_tensorflow(tmp_path):
    model = assemble(tiny_members(), [2.0, 1.0], (16, 16), tta="dihedral", prior_factors=FACTORS, temperature=1.7)
    model_dir = export_model(model, tmp_path / "model", {"name": "test", "task": "multiclass",
                                                         "classes": list(DX_CLASSES), "tta": "dihedral",
                                                         "decision": "prior", "temperature": 1.7})
    raw = np.random.default_rng(1).integers(0, 256, (3, 30, 40, 3), dtype=np.uint8)
    np.testing.assert_allclose(plain_tensorflow_outputs(model_dir, raw, tmp_path), model(raw).numpy(), atol=1e-5)
    reloaded = keras.saving.load_model(model_dir / "model.keras")  # the layers' configs round-trip
    np.testing.assert_allclose(reloaded(raw).numpy(), model(raw).numpy(), atol=1e-6)
    card = (model_dir / "model_card.md").read_text()
    assert "- **tta**: dihedral" in card and "- **decision**: prior" in card and "- **temperature**: 1.7" in card
