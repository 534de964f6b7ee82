"""The explorer's settings state: the current :class:`~.settings.Settings`, a change validated
against the session, and what each control offers for them.

    >>> state = SettingsState(session, Settings(model="bundled", layer="input"))
    >>> new = state.validated({"method": "fg_score_cam_denoise", "layer": 13})   # raises on bad values
    >>> state.settings = new
    >>> state.controls()["fraction"].enabled
    True

Validation may load a model (a change of ``model``) or add an image (a file path), both
through the session; it changes no settings itself.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from ..catalogue import layer_label, method_label
from ..methods.fgcam import BASES, denoise_rank
from ..catalogue import is_input_layer
from .gallery import model_label
from .session import ModelEntry, Session
from .settings import CAMS, KEEP, METHODS, PREDICTED, RULES, Control, Settings, fraction_choices, parse_method

__all__ = ["SettingsState", "carry_layer"]

Options = tuple[tuple[str, Any], ...]


def carry_layer(layer: int | str, old: ModelEntry, new: ModelEntry) -> int | str:
    """The layer of ``new``'s menu at the same resolution as ``layer`` of ``old`` (the input
    stays the input; none at that resolution: the input)."""
    if is_input_layer(layer):
        return new.layers[-1]
    width = old.width(layer)
    return next((known for known in new.layers if not is_input_layer(known) and new.width(known) == width),
                new.layers[-1])


class SettingsState:
    """The settings of one explorer over a session (forks share the session's models, not this)."""

    def __init__(self, session: Session, settings: Settings) -> None:
        self.session = session
        self.settings = settings

    def validated(self, changes: Mapping[str, Any]) -> Settings:
        """New settings from ``changes`` (values other than KEEP), validated; raises on invalid values."""
        changes = {k: v for k, v in changes.items() if v is not KEEP}
        s, session = self.settings, self.session
        new = session.active  # the model the other settings are checked against
        if "model" in changes and changes["model"] != s.model:
            new = session.load(str(changes["model"]))  # loads it the first time
            changes["model"] = str(changes["model"])
            if "layer" not in changes:
                changes["layer"] = carry_layer(s.layer, session.active, new)
            if "target" not in changes and new.class_names != session.active.class_names:
                changes["target"] = None  # another model's class i is another class
        if "image" in changes:
            changes["image"] = session.image_index(changes["image"])
            if changes["image"] != s.image and "target" not in changes:
                changes["target"] = None
        base = changes.get("base", s.base)
        if "method" in changes:
            method, base, want_denoise = parse_method(changes["method"], base)
            changes["method"], changes["base"] = method, base
            if want_denoise is not None and "denoise" not in changes:
                changes["denoise"] = want_denoise
        elif "base" in changes and base not in BASES:
            raise ValueError(f"unknown FG-CAM base {base!r}; use one of {', '.join(BASES)}")
        if changes.get("rules", s.rules) not in RULES:
            raise ValueError(f"unknown rules {changes['rules']!r}; use one of {', '.join(RULES)}")
        if "layer" in changes:
            changes["layer"] = new.layer_spec(changes["layer"])
        if "fraction" in changes:
            denoise_rank(float(changes["fraction"]), 1, 1)  # validates (0, 1]
            changes["fraction"] = float(changes["fraction"])
        if changes.get("target") == PREDICTED:
            changes["target"] = None
        elif changes.get("target") is not None:
            changes["target"] = int(changes["target"])
        return replace(s, **changes)

    # -- what the controls show -----------------------------------------------------
    def controls(self) -> dict[str, Control]:
        """What each control lists and shows for the current settings (see :class:`Control`)."""
        s, session = self.settings, self.session
        fg = s.method == "fg_cam"
        return {
            "model": Control(tuple((model_label(name), name) for name in session.sources), s.model,
                             len(session.sources) > 1),
            "image": Control(tuple((name, i) for i, (name, _) in enumerate(session.images)), s.image),
            "target": Control(self._class_options(), PREDICTED if s.target is None else s.target),
            "method": Control(tuple((v, k) for k, v in METHODS.items()), s.method),
            "base": Control(tuple((method_label(b), b) for b in BASES), s.base, fg),
            "layer": Control(self._layer_options(), s.layer),
            "rules": Control(tuple((r, r) for r in RULES), s.rules, s.method not in CAMS),
            "denoise": Control(None, s.denoise, fg),
            "fraction": Control(self._fraction_options(), s.fraction, fg and s.denoise),
            "signed": Control(None, s.signed),
        }

    def _class_options(self) -> Options:
        s, session = self.settings, self.session
        top = session.top_classes(s.image, 5)
        if s.target is not None and s.target not in [c for c, _, _ in top]:
            top.append((s.target, session.active.class_names[s.target], float(session.probabilities(s.image)[s.target])))
        return ((f"predicted: {top[0][1]} ({top[0][2]:.2f})", PREDICTED),) + tuple(
            (f"{n} ({p:.2f})", c) for c, n, p in top)

    def _layer_options(self) -> Options:
        entry, layer = self.session.active, self.settings.layer
        extra = [] if layer in entry.layers else [layer]
        out = []
        for known in entry.layers + extra:
            shape = entry.shapes[entry.graph.position(known)]
            out.append((f"{layer_label(known)} ({shape[-2]}x{shape[-1]})", known))
        return tuple(out)

    def _fraction_options(self) -> Options:
        entry, fraction = self.session.active, self.settings.fraction
        shape = entry.shapes[entry.graph.default_component_layer()]
        options = fraction_choices(int(shape[1]), int(shape[2] * shape[3]))
        if all(abs(f - fraction) > 1e-12 for _, f in options):
            options = sorted(options + [(f"{fraction:.3g}", fraction)], key=lambda o: o[1])
        return tuple(options)
