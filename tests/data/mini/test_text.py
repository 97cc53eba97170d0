"""EChat-mini's words: every sentence once, transcripts as ASR targets, replies that follow the cues, and
unseen sentences kept out of training for every template."""

import random

from echat.data.mini.text import (
    OPENERS,
    TEMPLATES,
    all_sentences,
    normalise_transcript,
    reply_emotion,
    reply_text,
    split_sentences,
    think_paragraph,
)
from echat.tokens import REPLY_EMOTIONS


def test_every_opener_template_and_slot_gives_one_sentence():
    sentences = all_sentences()
    assert len(sentences) == sum(len(slots) for _, slots, _ in TEMPLATES) * len(OPENERS)
    assert len({s.text for s in sentences}) == len(sentences)
    assert all(s.transcript == normalise_transcript(s.text) for s in sentences)


def test_transcripts_are_lower_case_words_with_apostrophes_kept():
    assert normalise_transcript("Well, I'm SO tired -- again!") == "well i'm so tired again"


def test_the_event_decides_the_reply_emotion_when_it_is_telling():
    assert reply_emotion("<HAPPY>", "<CRY>") == "<COMFORTING>"
    assert reply_emotion("<SAD>", "<OTHER>") == reply_emotion("<SAD>", "<COUGH>")
    sentence = all_sentences()[0]
    tag, text = reply_text(sentence, "<CHILD>", "<SAD>", "<OTHER>", random.Random(0))
    assert tag in REPLY_EMOTIONS["mini"] and text.endswith("You are a brave kid.")
    paragraph = think_paragraph(sentence, "<OLD>", "<FEMALE>", "<SAD>", "<OTHER>", tag, random.Random(0))
    assert f'"{sentence.text}"' in paragraph


def test_unseen_sentences_come_from_every_template_and_never_overlap_the_seen_ones():
    seen, unseen = split_sentences(all_sentences(), 0.25, random.Random(0))
    assert not {s.text for s in seen} & {s.text for s in unseen}
    assert {s.template for s in unseen} == {s.template for s in seen} == set(range(len(TEMPLATES)))
    assert len(seen) + len(unseen) == len(all_sentences())
