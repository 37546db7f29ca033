"""Class roles: declared in dataset.yaml (or a model file), the naming rule without them."""

from __future__ import annotations

import numpy as np
import pytest

from tpnet.core.contract import (
    ContractError,
    critical_class_indices,
    default_roles,
    load_spec,
    parse_roles,
    trp_class_indices,
)
from tpnet.core.postprocess import PostprocessParams, find_trigger_points, labels_from_probs

CLASSES = ("background", "active_trp", "latent_trp", "vessel", "nerve")


def test_without_roles_the_naming_rule_holds():
    roles = default_roles(CLASSES)
    assert trp_class_indices(CLASSES) == trp_class_indices(CLASSES, roles) == [1, 2]
    assert critical_class_indices(CLASSES) == [3, 4]
    assert critical_class_indices(("background", "active_trp", "latent_trp", "vessel")) == [3]


def test_declared_roles_win_over_names(tmp_path):
    (tmp_path / "dataset.yaml").write_text(
        "classes: [background, nodule, artery, median_nerve]\nroles: {trp: [nodule], critical: [artery, median_nerve]}\n"
    )
    spec = load_spec(tmp_path)
    assert trp_class_indices(spec.classes, spec.class_roles) == [1]
    assert critical_class_indices(spec.classes, spec.class_roles) == [2, 3]
    # and post-processing finds the declared class as a trigger point
    labels = np.zeros((40, 40), np.uint8)
    labels[10:20, 10:20] = 1
    points = find_trigger_points(labels, 0.2, spec.classes, roles=spec.class_roles)
    assert [p.class_name for p in points] == ["nodule"]
    assert find_trigger_points(labels, 0.2, spec.classes) == []  # the naming rule knows no "nodule"
    probs = np.zeros((4, 40, 40), np.float32)
    probs[0] = 1.0
    probs[:, 10:20, 10:20] = [[[0.0]], [[1.0]], [[0.0]], [[0.0]]]
    assert labels_from_probs(probs, spec.classes, PostprocessParams(), 0.2, spec.class_roles)[15, 15] == 1


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"trp": ["tumour"]}, "not in classes"),
        ({"critical": ["background"]}, "background"),
        ({"trp": ["vessel"]}, "both a trigger point"),
        ({"needle": []}, "unknown role"),
        ({"trp": "active_trp"}, "list of class names"),
        (["trp"], "mapping"),
    ],
)
def test_bad_roles_name_the_problem(raw, message):
    with pytest.raises(ContractError, match=message):
        parse_roles(raw, CLASSES, "dataset.yaml")


def test_a_role_left_out_keeps_its_default():
    roles = parse_roles({"critical": ["vessel"]}, CLASSES, "x")
    assert roles.trp == ("active_trp", "latent_trp") and roles.critical == ("vessel",)


def test_the_overlay_treats_a_declared_trp_class_as_a_trigger_point():
    from tpnet.core.overlay import _legend_entries, _trp_components

    classes = ("background", "nodule", "artery")
    roles = parse_roles({"trp": ["nodule"], "critical": ["artery"]}, classes, "x")
    labels = np.zeros((30, 30), np.uint8)
    labels[5:12, 5:12] = 1
    assert len(_trp_components(labels, classes, [], roles)) == 1
    assert _trp_components(labels, classes, []) == {}  # the naming rule sees no TrP class
    assert any("ndeterminate" in text for text, _ in _legend_entries(classes, False, None, roles=roles))
