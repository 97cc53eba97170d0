"""A seeded smoke-size EChat with the mini tokenizer, and encoded fixture batches per output type."""

import random

import pytest
import torch

from echat.config import preset
from echat.data.pipeline import SampleEncoder, SkipSummary, collate, load_samples
from echat.data.schema import read_manifest
from echat.models.echat import EChat
from tests.conftest import FIXTURES


@pytest.fixture
def smoke_model(mini_tok):
    torch.manual_seed(0)
    return EChat(preset("smoke"), mini_tok).eval()


@pytest.fixture(scope="session")
def fixture_samples():
    config = preset("smoke")
    skipped = SkipSummary()
    samples = list(load_samples(read_manifest(FIXTURES / "sample.jsonl"), FIXTURES, config, skipped))
    assert skipped.total == 0, skipped.render()
    return samples


@pytest.fixture
def batch_of(fixture_samples, mini_tok):
    """``batch_of(kind, think="tag")`` -> a Batch of every fixture sample of that output type."""
    def make(kind, think="tag"):
        encoder = SampleEncoder(preset("smoke"), mini_tok, think=think)
        examples = [encoder.encode(s, random.Random(0)) for s in fixture_samples]
        chosen = [e for e in examples if e.kind is kind]
        assert chosen, f"no fixture of kind {kind}"
        return collate(chosen, encoder.ids.pad)
    return make
