"""Family ``backbone``: keras.applications models inside a candidate, their weights and their fine-tuning."""

import re

import keras
import numpy as np
import pytest

from automl.data import load_dataset
from automl.errors import UserError
from automl.hparams import ModelConfig
from automl.model import BACKBONE_LAYER, build_model
from automl.objective import Objective
from automl.spec import TrainingSpec, parse_spec
from automl.trial import EpochRunner
from automl.weights import ensure_imagenet, require_weights
from tests.conftest import make_ham

# Parameters of keras.applications models with include_top=False (Keras 3.15; independent of the input
# size). Seed 003's table gives the same 23,587,712 for ResNet50.
KERAS_NOTOP = {"VGG19": 20_024_384, "InceptionV3": 21_802_784, "ResNet50": 23_587_712,
               "InceptionResNetV2": 54_336_736, "MobileNet": 3_228_864, "DenseNet169": 12_642_880}
# Channels of each one's last feature map (what a global-average head sees).
CHANNELS = {"InceptionV3": 2048, "ResNet50": 2048, "InceptionResNetV2": 1536, "MobileNet": 1024, "DenseNet169": 1664}


def dense(inputs: int, units: int) -> int:
    return inputs * units + units


# (backbone, head and fine-tuning, head parameters worked out by hand). Binary, 224 px, one sigmoid unit.
SEED_MODELS = {
    # Seed 001: VGG19 with its two 4096-unit FC layers and a binary output, fully retrained (7x7x512 flattened).
    "seed001_vgg19": ("VGG19", {"head": "flatten", "dense_layers": 2, "dense_units": 4096, "dense_dropout": 0.0,
                                "trainable_layers": "all"},
                      dense(7 * 7 * 512, 4096) + dense(4096, 4096) + dense(4096, 1)),
    # Seed 001: InceptionV3 + dense/dropout head, gradient clipping at 1.0, the last 150 layers unfrozen.
    "seed001_inception_v3": ("InceptionV3", {"head": "gap", "dense_layers": 1, "dense_units": 1024,
                                             "dense_dropout": 0.5, "clipnorm": 1.0, "trainable_layers": 150},
                             dense(2048, 1024) + dense(1024, 1)),
    # Seed 004's table: average pooling, dense 64, dropout 0.5, Adam 1e-4; various fine-tuning depths.
    **{f"seed004_{name.lower()}": (name, {"head": "gap", "dense_layers": 1, "dense_units": 64, "dense_dropout": 0.5,
                                          "learning_rate": 1e-4, "batch_size": 64, "trainable_layers": layers},
                                   dense(CHANNELS[name], 64) + dense(64, 1))
       for name, layers in [("ResNet50", "all"), ("InceptionV3", 0), ("InceptionResNetV2", 40), ("MobileNet", 20),
                            ("DenseNet169", "all")]},
}


def trainable_by_hand(backbone, last: int | str) -> int:
    """Weights of the last layers, less batch norm's moving statistics (never trained)."""
    layers = backbone.layers if last == "all" else backbone.layers[len(backbone.layers) - last:] if last else []
    return sum(int(np.prod(w.shape)) for layer in layers for w in layer.weights if "moving" not in w.path)


@pytest.mark.parametrize("case", SEED_MODELS)
def test_seed_transfer_models_have_keras_parameter_counts(case):
    name, params, head = SEED_MODELS[case]
    config = ModelConfig.from_params({"family": "backbone", "backbone": name, "weights": "none"} | params)
    model = build_model(config, (224, 224), 2)
    backbone = model.get_layer(BACKBONE_LAYER)
    assert backbone.count_params() == KERAS_NOTOP[name]
    assert model.count_params() == KERAS_NOTOP[name] + head
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == head + trainable_by_hand(backbone, params["trainable_layers"])
    assert model.output_shape == (None, 2)
    if "clipnorm" in params:
        assert model.optimizer.clipnorm == 1.0


@pytest.mark.parametrize("backbone, expected", [
    ("VGG16", [-103.939, -116.779, 131.32]),  # caffe: BGR, ImageNet means subtracted
    ("ResNet152", [-103.939, -116.779, 131.32]),
    ("DenseNet121", [2.2489, -2.0357, -1.8044]),  # torch: /255, then (x - mean) / std, RGB
    ("MobileNetV2", [1.0, -1.0, -1.0]),  # tf: x / 127.5 - 1
    ("EfficientNetB0", [255.0, 0.0, 0.0]),  # rescales inside the model itself
])
def test_each_backbone_gets_its_own_preprocessing_inside_the_graph(backbone, expected):
    from automl.model import BackboneInput

    red = np.zeros((1, 20, 20, 3), "float32")
    red[..., 0] = 255.0
    out = BackboneInput(backbone, (32, 32))(red).numpy()
    assert out.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(out[0, 16, 16], expected, rtol=1e-4)


def small(**params) -> ModelConfig:
    """MobileNet at its 32 px minimum, from 16 px images: a backbone that builds and trains in seconds."""
    return ModelConfig.from_params({"family": "backbone", "backbone": "MobileNet", "weights": "none",
                                    "backbone_input_size": 32, "head": "gap", "dense_layers": 0} | params)


def test_weights_path_reloads_a_saved_file(tmp_path):
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    models = {"trained": build_model(small(), (16, 16), 7)}
    path = tmp_path / "mobilenet.weights.h5"
    models["trained"].get_layer(BACKBONE_LAYER).save_weights(path)
    models["reloaded"] = build_model(small(weights=str(path)), (16, 16), 7)
    models["fresh"] = build_model(small(), (16, 16), 7)
    out = {k: m.get_layer(BACKBONE_LAYER)(m.get_layer("backbone_input")(x)).numpy() for k, m in models.items()}
    np.testing.assert_array_equal(out["reloaded"], out["trained"])
    assert not np.allclose(out["fresh"], out["trained"], rtol=1e-3, atol=0)  # a fresh draw differs: the file did it
    with pytest.raises(UserError, match="missing.weights.h5: file not found"):
        build_model(small(weights=str(tmp_path / "missing.weights.h5")), (16, 16), 7)
    other = tmp_path / "dense.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]).save_weights(other)
    with pytest.raises(UserError, match="not weights of MobileNet without top"):
        build_model(small(weights=str(other)), (16, 16), 7)


def snapshot(model) -> dict[str, np.ndarray]:
    return {w.path: w.numpy().copy() for w in model.get_layer(BACKBONE_LAYER).weights}


def test_head_warmup_then_the_last_layers_train_and_frozen_batch_norm_keeps_its_statistics(tmp_path):
    dataset = load_dataset(make_ham(tmp_path / "ham", lesions_per_class=2), image_size=(16, 16))
    config = small(warmup_epochs=1, trainable_layers=3, learning_rate=1e-2, finetune_lr_factor=0.1)

    def runner(checkpoint=None) -> EpochRunner:
        """Epoch by epoch, as a Ray trial trains (fit_candidate uses the same callbacks), resumed as it resumes."""
        made = EpochRunner(config, dataset, Objective(), TrainingSpec(), seed=0)
        if checkpoint:
            made.restore(checkpoint)
        return made

    first = runner()
    assert not any(layer.trainable for layer in first.model.get_layer(BACKBONE_LAYER).layers)  # the head alone
    states, rates = [snapshot(first.model)], [first.run_epoch()["learning_rate"]]
    states.append(snapshot(first.model))
    (tmp_path / "after_warmup").mkdir()
    first.save(tmp_path / "after_warmup")
    resumed = runner(tmp_path / "after_warmup")  # the unfreeze happens on a model restored from a checkpoint
    rates.append(resumed.run_epoch()["learning_rate"])
    states.append(snapshot(resumed.model))
    assert rates == pytest.approx([1e-2, 1e-3])
    expected = {"conv_pw_13/kernel", "conv_pw_13_bn/gamma", "conv_pw_13_bn/beta", "probabilities/kernel",
                "probabilities/bias"}
    assert {w.path for w in resumed.model.trainable_weights} == expected
    trained = {path for path in states[0] if path.split("/")[-2] in ("conv_pw_13", "conv_pw_13_bn")}
    for path, initial in states[0].items():
        np.testing.assert_array_equal(states[1][path], initial)  # warm-up: nothing in the backbone moved
        if path not in trained:
            # The frozen part, batch-norm statistics included (frozen batch norm runs in inference mode).
            np.testing.assert_array_equal(states[2][path], initial)
    # A random frozen part hands on a vanishing signal, so only these move visibly in one step.
    for path in ("conv_pw_13_bn/beta", "conv_pw_13_bn/moving_mean", "conv_pw_13_bn/moving_variance"):
        assert not np.array_equal(states[2][path], states[0][path]), path
    (tmp_path / "fine_tuning").mkdir()
    resumed.save(tmp_path / "fine_tuning")
    later = runner(tmp_path / "fine_tuning")  # resumed after the unfreeze: no second unfreeze, same optimizer
    optimizer, warmup = later.model.optimizer, later.callbacks[0]
    warmup.set_model(later.model)
    warmup.on_epoch_begin(2)
    assert later.model.optimizer is optimizer and float(optimizer.learning_rate) == pytest.approx(1e-3)
    assert {w.path for w in later.model.trainable_weights} == expected


def test_imagenet_files_come_from_the_cache_or_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("AUTOML_WEIGHTS_URL", "http://127.0.0.1:9")  # nothing listens: no network, at once
    spec = parse_spec({"data": {"image_size": 28}, "hyperparameters": {
        "family": {"choice": ["cnn", "backbone"]},
        "backbone": {"choice": ["MobileNetV2"], "when": "family == backbone"},
        "weights": "imagenet", "backbone_input_size": 32}})
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"  # Keras' 224 file below 96 px
    with pytest.raises(UserError) as raised:
        require_weights(spec)
    message = str(raised.value)
    assert "\n" not in message and name in message and str(tmp_path / "keras" / "models") in message
    assert "weights: PATH" in message
    (tmp_path / "keras" / "models" / name).write_bytes(b"cached")  # once fetched, never again
    require_weights(spec)
    assert ensure_imagenet("MobileNetV2", (32, 32)) == tmp_path / "keras" / "models" / name
    require_weights(spec, [{"family": "backbone", "backbone": "MobileNetV2", "weights": "none"}])
    with pytest.raises(UserError, match="gone.h5: file not found"):
        require_weights(spec, [{"family": "backbone", "backbone": "MobileNetV2", "weights": str(tmp_path / "gone.h5")}])


def test_mixed_ensemble_exports_and_predicts_raw_images(tmp_path):
    """Seed 001's kind of ensemble: scratch models and a transfer model, one graph over raw images of any size."""
    import pandas as pd
    from PIL import Image

    from automl.data import resize_image
    from automl.export import assemble, card_markdown, member_family
    from automl.files import write_json
    from automl.layout import ModelLayout
    from automl.predict import predict_files

    configs = [{"conv_blocks": 1, "base_filters": 4, "dense_units": 8},
               {"family": "resnet", "resnet_stages": 2, "resnet_blocks": 1, "resnet_width": 4, "head": "gap",
                "dense_layers": 0, "colour_constancy": "shades_of_gray"},
               small(brightness=0.1, flip_horizontal=True).to_params()]
    members = [build_model(ModelConfig.from_params(c), (16, 16), 2) for c in configs]
    model = assemble(members, [1.0, 1.0, 2.0], (16, 16))
    raw = np.random.default_rng(0).integers(0, 256, (2, 45, 60, 3), dtype=np.uint8)
    resized = np.stack([resize_image(image, (16, 16)) for image in raw]).astype("float32")
    each = [m(resized, training=False).numpy() for m in members]
    np.testing.assert_allclose(model(raw).numpy(), (each[0] + each[1] + 2 * each[2]) / 4, atol=1e-6)
    rows = [pd.Series({"hp_conv_blocks": 1}), pd.Series({"hp_family": "resnet"}),
            pd.Series({"hp_family": "backbone", "hp_backbone": "MobileNet"})]
    card = {"name": "mixed", "task": "binary", "classes": ["benign", "malignant"],
            "members": [{"member_id": f"m0{i + 1}", "weight": w, "search_trial": "t", "seed": 0} | member_family(r)
                        for i, (r, w) in enumerate(zip(rows, [0.25, 0.25, 0.5]))]}
    assert [m["family"] for m in card["members"]] == ["cnn", "resnet", "backbone"]
    assert "| m03 | backbone MobileNet | 0.50 |" in card_markdown(card)
    # The model file and card export_model writes (its SavedModel, minutes of tracing on a busy box, is left out).
    layout = ModelLayout(tmp_path / "model")
    layout.root.mkdir()
    model.save(layout.keras_file)
    write_json(layout.card_json, card)
    Image.fromarray(raw[0]).save(tmp_path / "ISIC_1.png")
    table = predict_files(tmp_path / "model", [tmp_path / "ISIC_1.png"], tmp_path / "preds.csv")
    np.testing.assert_allclose(table[["p_malignant"]].to_numpy(float)[0], model(raw[:1]).numpy()[0, 1:], atol=1e-5)


def test_search_with_imagenet_weights_offline_is_one_line_exit_2_and_writes_nothing(tiny_ham, tmp_path, monkeypatch,
                                                                                   capsys):
    from automl.cli import main
    from automl.spec import shipped_specs_dir

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("AUTOML_WEIGHTS_URL", "http://127.0.0.1:9")  # nothing listens: no network, at once
    spec = shipped_specs_dir() / "transfer_binary.yaml"
    code = main(["search", str(spec), "--data", str(tiny_ham), "--name", "t", "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("automl search: error")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert re.search(r"cannot fetch \w+_notop\.h5 for \w+ ", lines[0]), lines[0]
    assert f"{tmp_path / 'keras' / 'models'}/" in lines[0] and "weights: PATH" in lines[0]
    run_dir = tmp_path / "results" / "t"
    assert not run_dir.exists() or [p.name for p in run_dir.iterdir()] == [".lock"]  # the command's lock only
