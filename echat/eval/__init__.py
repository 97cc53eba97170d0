"""Evaluation tools: an independent offline speech recognizer (:mod:`echat.eval.asr`, OpenAI Whisper
base) and WER/CER metrics with a documented text normaliser (:mod:`echat.eval.metrics`).

The submodules are not imported here, so ``import echat.eval`` stays light (no torch).
"""
