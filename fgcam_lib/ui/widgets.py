"""The explorer as an ipywidgets app: controls that mirror :meth:`Explorer.controls` and call
:meth:`Explorer.update`.

    >>> from fgcam_lib.ui.widgets import Explorer
    >>> from fgcam_lib.ui.gallery import model_menu
    >>> app = Explorer(model, preprocess)              # benchmark scenes + bundled photos
    >>> app.show()                                     # JupyterLab: the interactive app
    >>> lab = app.fork()                               # headless states that leave the app alone
    >>> fig = lab.update(method="fg_grad_cam", layer=13, fraction=0.25)
    >>> app = Explorer.from_models(model_menu())   # with a model menu (each loads when chosen)

All state, caching and drawing live in the headless :class:`fgcam_lib.ui.explorer.Explorer`;
this module builds the controls, keeps them in step with the settings and shows the result
(the figure, or only the message when the settings cannot be explained). A saved notebook
shows the app's starting figure as a picture until the notebook runs again.
ipywidgets is imported by :meth:`Explorer.show` only.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Any, Callable, Sequence

from . import explorer as core

__all__ = ["Explorer", "ExplorerView"]

#: controls bound to a setting of the same name
_BOUND = ("model", "image", "target", "method", "base", "layer", "rules", "denoise", "fraction", "signed")
#: descriptions at their full width ("rank fraction" is not cut to "rank fracti...")
_STYLE = {"description_width": "initial"}
#: the rank-fraction slider's width in px: its description (~90), the track (148 and its
#: margins) and a readout of up to READOUT_CHARS characters at ~7 px ("0.00195 (rank 1)"), so
#: the browser does not shrink the readout to "0.1 (rank 1" as it did at 320 px
READOUT_CHARS = 16
SLIDER_WIDTH = 90 + 164 + 7 * READOUT_CHARS + 14
#: rules buttons that fit the 300 px middle column (two at their default width took 304 px)
_RULES_STYLE = {"description_width": "initial", "button_width": "96px"}


def _column(children: Sequence[Any]) -> Any:
    """A column of controls that keeps its width: a narrow notebook wraps the columns onto
    the next line instead of squeezing them into scrolling boxes."""
    import ipywidgets as W

    return W.VBox(list(children), layout=W.Layout(flex="0 0 auto", margin="0 16px 4px 0"))


class ExplorerView:
    """The controls, message line and figure of one explorer, kept in step with its settings.

    In a notebook the view displays itself as the live app, with a PNG of the figure it
    started with for frontends that cannot run widgets (a saved notebook, a static copy).
    """

    def __init__(self, explorer: core.Explorer) -> None:
        import ipywidgets as W

        self.explorer = explorer
        self._syncing = False
        c = explorer.controls()
        wide = W.Layout(width="320px")

        def menu(name: str, label: str, kind: Callable = W.Dropdown, **kw: Any) -> Any:
            return kind(options=c[name].options, value=c[name].value, description=label, style=_STYLE, **kw)

        ws: dict[str, Any] = {
            "model": menu("model", "model", layout=wide),   # a model loads the first time it is chosen
            "image": menu("image", "image", layout=wide),
            "path": W.Text(placeholder="path/to/image.png", description="file", style=_STYLE,
                           layout=W.Layout(width="256px")),   # with "load", as wide as the menus above
            "load": W.Button(description="load", layout=W.Layout(width="60px")),
            "upload": W.FileUpload(accept="image/*", multiple=False, description="upload"),
            "target": menu("target", "class", layout=wide),
            "method": menu("method", "method"),
            "base": menu("base", "base CAM"),
            "layer": menu("layer", "layer"),
            "rules": W.ToggleButtons(options=c["rules"].options, value=c["rules"].value, description="rules",
                                     style=_RULES_STYLE),
            "denoise": W.Checkbox(value=c["denoise"].value, description="SVD denoising", style=_STYLE),
            "fraction": menu("fraction", "rank fraction", W.SelectionSlider, continuous_update=False,
                             layout=W.Layout(width=f"{SLIDER_WIDTH}px")),
            "signed": W.Checkbox(value=c["signed"].value, description="signed (red/blue)", style=_STYLE),
            "message": W.HTML(),
            "view": W.Image(format="png"),
        }
        self.widgets = ws
        for name in _BOUND:
            ws[name].observe(self._on_change(name), names="value")
        ws["load"].on_click(lambda _: self._load_path())
        ws["path"].on_submit(lambda _: self._load_path())
        ws["upload"].observe(lambda change: self._load_upload(change["new"]), names="value")
        left = _column([ws["model"], ws["image"], W.HBox([ws["path"], ws["load"]]), ws["upload"], ws["target"]])
        mid = _column([ws["method"], ws["base"], ws["layer"], ws["rules"]])
        right = _column([ws["denoise"], ws["fraction"], ws["signed"]])
        self.panel = W.HBox([left, mid, right], layout=W.Layout(flex_flow="row wrap"))
        self.widget = W.VBox([self.panel, ws["message"], ws["view"]])
        self._sync()
        explorer.subscribe(self._on_event)

    # -- explorer -> controls -----------------------------------------------------
    def _on_event(self, event: str) -> None:
        if event == "result":
            self._show_result()
        else:
            self._sync()

    def _sync(self) -> None:
        """Make the controls show the current settings (after a headless or chained change)."""
        ws = self.widgets
        self._syncing = True
        try:
            for name, control in self.explorer.controls().items():
                w = ws[name]
                if control.options is not None and tuple(w.options) != control.options:
                    w.options = control.options
                w.value = control.value
                w.disabled = not control.enabled
        finally:
            self._syncing = False

    def _show_message(self, text: str) -> None:
        self.widgets["message"].value = f"<span style='color:#a00'>{html.escape(text)}</span>"

    def _show_result(self) -> None:
        """The figure, or only the message: a figure of earlier settings is not left under it."""
        ws, ex = self.widgets, self.explorer
        if ex.error or ex.figure is None:
            self._show_message(ex.error or "nothing to show")
            ws["view"].value = b""
            ws["view"].layout.display = "none"
            return
        ws["message"].value = ""
        ws["view"].value = ex.figure.png(ex.display_dpi)
        ws["view"].layout.display = None

    # -- controls -> explorer -----------------------------------------------------
    def _on_change(self, name: str) -> Callable[[dict], None]:
        """Observer for one control: push its value through ``update``."""

        def handler(change: dict) -> None:
            if not self._syncing:
                self.explorer.update(**{name: change["new"]})

        return handler

    def _load_path(self) -> None:
        path = self.widgets["path"].value.strip()
        if path:
            self.explorer.update(image=path)

    def _load_upload(self, value: Sequence[dict]) -> None:
        from PIL import Image

        if not value:
            return
        item = value[0]
        try:
            with Image.open(io.BytesIO(bytes(item["content"]))) as im:
                im.load()
                i = self.explorer.add_image(im.copy(), item.get("name") or None)
        except (OSError, ValueError) as err:
            self._show_message(f"cannot read {item.get('name', 'the upload')!r} as an image: {err}")
            return
        self.explorer.update(image=i)

    # -- display ------------------------------------------------------------------
    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The live widget, a PNG of the current figure and a one-line text (frontends pick one)."""
        data = dict(self.widget._repr_mimebundle_(include=include, exclude=exclude) or {})
        data["image/png"] = base64.b64encode(self.explorer.snapshot()).decode("ascii")
        data["text/plain"] = f"Explorer app: {self.explorer.describe()} (run the notebook for the live controls)"
        return data


class Explorer(core.Explorer):
    """The headless :class:`fgcam_lib.ui.explorer.Explorer` plus :meth:`show`, its ipywidgets app."""

    _view: ExplorerView | None = None

    def show(self) -> ExplorerView:
        """Build the controls (once) and return the app; in a notebook it displays itself."""
        if self._view is None:
            self._view = ExplorerView(self)
            self.update()
        return self._view

    @property
    def _widgets(self) -> dict[str, Any] | None:
        """The controls by name, once :meth:`show` has built them."""
        return None if self._view is None else self._view.widgets
