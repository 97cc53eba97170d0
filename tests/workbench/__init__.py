"""Tests of ``echat.workbench``: run folders, figures, the demo, notebooks and their display helpers."""
