"""The interactive workbench: one ipywidgets app to talk to a model and see why it answered as it did.

``echat.app.show(model=..., corpus=...)`` displays it: pick a corpus test clip (filtered by its labels), upload a
file or record from the microphone; choose the task, think mode, model and decoding; read the think and the reply
as they stream, hear the reply, see the timings and the attention of the answer onto the audio; compare two
settings or two models (A/B); chat over several turns. The logic is :mod:`echat.app.controller` (no browser
needed), the widgets :mod:`echat.app.view`, the recorder :mod:`echat.app.recorder`.
"""

from __future__ import annotations

from pathlib import Path

from echat.app.controller import Controller, Settings
from echat.app.inputs import AppError, corpus_samples
from echat.app.view import SECTIONS, App

__all__ = ["App", "AppError", "Controller", "Settings", "show"]


def show(model=None, corpus: str | Path | None = None, run=None, settings: Settings | None = None, model_b=None,
         think_b: str = "language", sections=SECTIONS, display: bool = True, token2wav=None) -> App:
    """Build the app (and display it in the notebook unless ``display`` is False) and return it.

    ``model``: an EChat (else ``run``: a run folder, checkpoint or :class:`echat.workbench.runs.StageRun`, loaded
    with :func:`echat.eval.stage_eval.load_model`; neither: load one from the app); ``corpus``: an EChat-mini
    folder whose test clips the sample picker offers; ``settings``: the controls' start values; ``model_b`` /
    ``think_b``: side B of the A/B view; ``sections``: which parts to show (:data:`echat.app.view.SECTIONS`);
    ``token2wav``: the voice of every model without one of its own — the full world's CosyVoice token2wav for a
    model from a released ``.pt`` (``EChat.from_reference_checkpoint``; a ``.pt`` path typed into the app loads too).
    """
    controller = Controller(model, token2wav=token2wav)
    if model is None and run is not None:
        controller.use(controller.load(str(getattr(run, "final", run))))
    app = App(controller, corpus_samples(corpus) if corpus else (), settings, controller.voiced(model_b), think_b,
              sections)
    if display:
        from IPython.display import display as show_widget

        show_widget(app.widget)
    return app
