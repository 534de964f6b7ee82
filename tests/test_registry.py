"""The method registry and the CAM bases read their display labels from the catalogue, and only there."""
from __future__ import annotations

import pytest

from fgcam_lib import catalogue
from fgcam_lib.catalogue import METHOD_LABELS, OTHER_LABELS, method_label
from fgcam_lib.methods import CAM_BASES, METHODS, HiResCAM, label
from fgcam_lib.methods.bases import base_label, make_base
from fgcam_lib.methods.cam import GradCAM, GradCAMpp, LayerCAM, ScoreCAM, XGradCAM


def test_every_registered_method_has_a_label_and_every_label_a_method():
    assert list(METHOD_LABELS) == list(METHODS)  # same names, the paper's order
    assert all(METHODS[m].label == METHOD_LABELS[m] == label(m) for m in METHODS)


def test_other_labels_name_bases_or_the_fg_cam_family_and_no_method():
    assert not set(OTHER_LABELS) & set(METHODS)
    assert set(OTHER_LABELS) <= set(CAM_BASES) | {"fg_cam"}
    for name in CAM_BASES:  # every base FG-CAM takes by name has a label
        assert method_label(name) != name
        assert base_label(make_base(name)) == base_label(name) == method_label(name)


@pytest.mark.parametrize("cls,key", [(GradCAM, "grad_cam"), (GradCAMpp, "grad_cam_pp"), (XGradCAM, "xgrad_cam"),
                                     (LayerCAM, "layer_cam"), (ScoreCAM, "score_cam"), (HiResCAM, "hires_cam")])
def test_explainer_classes_read_their_label_from_the_catalogue(cls, key, tiny_vgg):
    assert cls.name == method_label(key)
    assert cls(tiny_vgg).name == method_label(key)


def _string_literals(module) -> set[str]:
    """The string constants in a module's code, docstrings and its own names (``__all__``) left out."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(module))
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
            and not hasattr(module, node.value)}


def test_labels_are_written_in_the_catalogue_only():
    from fgcam_lib.methods import bases, cam, finer, fgcam, hirescam, pgc, registry

    labels = set(METHOD_LABELS.values()) | set(OTHER_LABELS.values())
    for module in (registry, cam, hirescam, finer, bases, fgcam, pgc):
        assert not _string_literals(module) & labels, module.__name__
    assert catalogue.method_label("unknown") == "unknown"
