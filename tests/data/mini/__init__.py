"""Tests of ``echat.data.mini``: the EChat-mini builders."""
