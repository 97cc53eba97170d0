"""The microphone recorder of the app: a button in the browser, a 16 kHz float32 wave in Python.

Why our own widget (checked on PyPI on 2026-12-07 with ``pip index versions`` and ``pip download --no-deps``):
``ipywebrtc`` 0.6.0 is its last release (2021-03-29); its JupyterLab extension was built with
``@jupyterlab/builder`` 3 and accepts ``@jupyter-widgets/base`` only up to 4, while ipywidgets 8 (which
JupyterLab 4 runs) ships base 6, so it does not declare JupyterLab 4 support. ``ipyaudio`` 0.1.32
(2026-08-28) is alive and its prebuilt extension is built for JupyterLab 4 (no JupyterLab classifier,
though), but it records with ``MediaRecorder`` (a compressed codec) and decodes in Python through
``audiolab``, which brings PyAV (FFmpeg), ``ipydatawidgets`` (last release 2023), ``smart_open`` and
``requests``. An ``anywidget`` of our own needs none of that: about seventy lines of JavaScript capture raw
PCM through the Web Audio API (no codec, so nothing to decode), and the same Python path that the browser
calls, :meth:`Recorder.receive`, is unit-tested without a browser.

Browser side: one button ("Record", "Stop" while recording) in an element of CSS class ``echat-record``,
and a status line. ``getUserMedia`` → ``AudioContext`` → an ``AudioWorklet`` that copies each 128-sample
block of channel 0 (mono) to the main thread; on Stop (or after ``max_seconds``) the float32 samples travel
as one binary buffer with the context's sample rate (usually 48 kHz). Python resamples them to 16 kHz with
librosa.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import anywidget
import numpy as np
import traitlets

from echat.audio import SAMPLE_RATE_HZ, resample

# Bytes per sample of each PCM layout that receive() reads (little-endian, as the browser writes).
SAMPLE_FORMATS = {"float32": np.dtype("<f4"), "int16": np.dtype("<i2")}
INT16_FULL_SCALE = 32768.0
MAX_RECORD_S = 30.0

_WORKLET = """
registerProcessor("echat-pcm", class extends AudioWorkletProcessor {
  process(inputs) {
    if (inputs[0].length) this.port.postMessage(inputs[0][0].slice());
    return true;
  }
});
"""

_ESM_BODY = """
async function startCapture(maxSeconds, onFull) {
  const stream = await navigator.mediaDevices.getUserMedia(
    {audio: {channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
  const context = new AudioContext();
  const url = URL.createObjectURL(new Blob([WORKLET], {type: "text/javascript"}));
  await context.audioWorklet.addModule(url);
  URL.revokeObjectURL(url);
  const source = context.createMediaStreamSource(stream);
  const tap = new AudioWorkletNode(context, "echat-pcm");
  const blocks = [];
  let count = 0;
  tap.port.onmessage = (event) => {
    blocks.push(event.data);
    count += event.data.length;
    if (count >= maxSeconds * context.sampleRate) onFull();
  };
  source.connect(tap);
  return async () => {
    source.disconnect();
    stream.getTracks().forEach((track) => track.stop());
    const rate = context.sampleRate;
    await context.close();
    const samples = new Float32Array(count);
    blocks.reduce((at, block) => (samples.set(block, at), at + block.length), 0);
    return {rate, samples};
  };
}

function render({model, el}) {
  el.classList.add("echat-record");
  const button = document.createElement("button");
  const status = document.createElement("span");
  button.textContent = "Record";
  status.className = "echat-record-status";
  const showStatus = () => { status.textContent = model.get("status"); };
  model.on("change:status", showStatus);
  showStatus();
  let stop = null;
  const finish = async () => {
    if (!stop) return;
    const stopCapture = stop;
    stop = null;
    button.textContent = "Record";
    const {rate, samples} = await stopCapture();
    model.send({kind: "pcm", rate}, undefined, [samples.buffer]);
  };
  button.addEventListener("click", async () => {
    if (stop) return finish();
    try {
      stop = await startCapture(model.get("max_seconds"), finish);
      button.textContent = "Stop";
      status.textContent = `recording… (at most ${model.get("max_seconds")} s)`;
    } catch (error) {
      status.textContent = `microphone unavailable: ${error.message}`;
    }
  });
  el.append(button, status);
  return () => { if (stop) stop(); };
}

export default {render};
"""
# The worklet travels inside the module as a string and is loaded from a Blob URL (no file to serve).
_ESM = f"const WORKLET = {json.dumps(_WORKLET.strip())};\n{_ESM_BODY}"

_CSS = """
.echat-record { display: flex; gap: 0.6em; align-items: center; }
.echat-record button { min-width: 5em; }
"""


def pcm_to_wave(pcm_bytes: bytes, rate: int, sample_format: str = "float32") -> np.ndarray:
    """Decode mono PCM ``pcm_bytes`` recorded at ``rate`` Hz into a float32 wave ``(N,)`` at 16 kHz.

    ``sample_format`` is ``"float32"`` (what the browser sends, in [-1, 1]) or ``"int16"``. Raises one
    ``ValueError`` line for an unknown format, a rate that is not positive, no data, or a byte count
    that is not a whole number of samples.
    """
    if sample_format not in SAMPLE_FORMATS:
        raise ValueError(f"unknown PCM sample format {sample_format!r}; expected one of {sorted(SAMPLE_FORMATS)}")
    if int(rate) <= 0:
        raise ValueError(f"the recording's sample rate must be positive, got {rate}")
    dtype = SAMPLE_FORMATS[sample_format]
    if len(pcm_bytes) == 0:
        raise ValueError("the recording is empty (0 bytes of PCM): record for longer, then press Stop")
    if len(pcm_bytes) % dtype.itemsize:
        raise ValueError(f"the recording has {len(pcm_bytes)} bytes, not a whole number of "
                         f"{dtype.itemsize}-byte {sample_format} samples")
    wave = np.frombuffer(pcm_bytes, dtype=dtype).astype(np.float32)  # (N,) at rate
    if sample_format == "int16":
        wave /= INT16_FULL_SCALE
    return np.ascontiguousarray(resample(wave, rate), dtype=np.float32)


class Recorder(anywidget.AnyWidget):
    """A Record/Stop button that records the browser's microphone; each recording becomes a 16 kHz wave.

    ``wave()`` gives the last recording (float32 ``(N,)`` at 16 kHz, or None); ``on_recorded(callback)``
    calls ``callback(wave)`` after each one. ``status`` is the line shown beside the button (the
    duration, or why a recording was refused); a recording stops by itself after ``max_seconds``.
    """

    _esm = _ESM
    _css = _CSS
    status = traitlets.Unicode("").tag(sync=True)
    # The browser stops by itself here: 30 s is the mini world's longest input (Whisper's window), and at
    # 48 kHz float32 it is 5.8 MB, inside the 10 MiB that one Jupyter websocket message may carry.
    max_seconds = traitlets.Float(MAX_RECORD_S).tag(sync=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._wave: np.ndarray | None = None
        self._callbacks: list[Callable[[np.ndarray], object]] = []
        self.on_msg(self._on_browser_message)

    def wave(self) -> np.ndarray | None:
        """The last recording as float32 ``(N,)`` at 16 kHz, or None before the first one."""
        return self._wave

    def on_recorded(self, callback: Callable[[np.ndarray], object]) -> None:
        """Call ``callback(wave)`` (float32 ``(N,)`` at 16 kHz) after every recording."""
        self._callbacks.append(callback)

    def receive(self, pcm_bytes: bytes, rate: int, sample_format: str = "float32") -> np.ndarray:
        """Take one recording of mono PCM at ``rate`` Hz (see :func:`pcm_to_wave`), keep it and tell the callbacks.

        Returns the 16 kHz wave ``(N,)``. A bad recording raises one ``ValueError`` line and keeps the
        previous one.
        """
        wave = pcm_to_wave(pcm_bytes, rate, sample_format)
        self._wave = wave
        self.status = f"recorded {wave.shape[0] / SAMPLE_RATE_HZ:.2f} s"
        for callback in self._callbacks:
            callback(wave)
        return wave

    def _on_browser_message(self, _widget, content: dict, buffers: list) -> None:
        """The browser's Stop: ``{"kind": "pcm", "rate": Hz}`` with the float32 samples as one buffer."""
        if not isinstance(content, dict) or content.get("kind") != "pcm":
            return
        try:
            self.receive(bytes(buffers[0]) if buffers else b"", content.get("rate", 0))
        except ValueError as error:
            self.status = str(error)
