"""Tests of ``echat.eval``: WER/CER metrics and the offline Whisper base recognizer."""
