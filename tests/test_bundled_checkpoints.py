"""The bundled checkpoints are held to their cards (robustbench style)."""

import math

import pytest

from robustbench_jr.data import bundled_mnist, load_dataset
from robustbench_jr.errors import DataNotFoundError
from robustbench_jr.models import bundled_names, load_checkpoint
from robustbench_jr.training import evaluate

NAMES = ["lenet-mnist", "lenet-mnist-jr"]


def test_bundled_names_present():
    assert set(NAMES) <= set(bundled_names())


@pytest.mark.parametrize("name", NAMES)
def test_card_has_required_fields(name):
    _, card = load_checkpoint(name)
    for key in ("architecture", "dataset", "normalization", "training", "metrics", "num_classes", "input_shape",
                "seed", "data_provenance", "package_version", "notes"):
        assert key in card, key
    assert card["training"]["dataset"] == "mnist" and card["data_provenance"]["n_train"] == 60000
    assert card["training"]["weight_decay"] == 5e-4 and card["training"]["dropout"] == 0.5
    assert 0.98 <= card["metrics"]["test_accuracy"] <= 1.0
    assert card["metrics"]["test_samples"] == 10000
    if card["training"]["steps_done"] < 150_000:
        assert any("Fewer steps than the paper" in n for n in card["notes"])


def test_jr_card_is_the_paper_setting():
    _, card = load_checkpoint("lenet-mnist-jr")
    t = card["training"]
    assert (t["regularizer"], t["lam"], t["n_proj"], t["reg_space"]) == ("jr", 0.01, 1, "normalized")
    _, base = load_checkpoint("lenet-mnist")
    assert base["training"]["regularizer"] == "none"


@pytest.mark.parametrize("name", NAMES)
def test_bundled_slice_matches_card(name):
    """On the first 1,000 test images (shipped) accuracy and ‖J‖_F agree with the card's
    full-test-set numbers within what a 1,000-image subset allows."""
    model, card = load_checkpoint(name)
    d = bundled_mnist()
    ev = evaluate(model, d.images, d.labels)
    acc, jn = card["metrics"]["test_accuracy"], card["metrics"]["jacobian_norm"]
    # binomial standard error of a 1,000-sample accuracy ≈ 0.3 points; allow 4 se
    assert abs(ev["accuracy"] - acc) <= 4 * math.sqrt(acc * (1 - acc) / 1000) + 1e-9
    assert ev["jacobian_norm"] == pytest.approx(jn, rel=0.15)
    assert ev["jacobian_norm_normalized_input"] == pytest.approx(ev["jacobian_norm"] * 0.3081, rel=1e-4)


def test_jacobian_regularization_shrinks_the_jacobian():
    d = bundled_mnist()
    norms = {n: evaluate(load_checkpoint(n)[0], d.images[:300], d.labels[:300])["jacobian_norm"] for n in NAMES}
    assert norms["lenet-mnist-jr"] * 4 < norms["lenet-mnist"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_full_test_set_reproduces_card(name):
    try:
        test = load_dataset("mnist", "test")
    except DataNotFoundError as exc:
        pytest.skip(f"full MNIST test set not available: {exc}")
    model, card = load_checkpoint(name)
    ev = evaluate(model, test.images, test.labels)
    assert ev["accuracy"] == pytest.approx(card["metrics"]["test_accuracy"], abs=1e-4)
    assert ev["jacobian_norm"] == pytest.approx(card["metrics"]["jacobian_norm"], rel=1e-4)
