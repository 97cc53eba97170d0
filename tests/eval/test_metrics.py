"""WER/CER and the text normaliser, on small hand-made examples with exact expected values."""

import math

import pytest

from echat.eval.metrics import cer, normalize_text, per_utterance_wer, wer


@pytest.mark.parametrize(("text", "expected"), [
    ("<HAPPY> I'm so SORRY, really!", "i am so sorry really"),
    ("<|en|><|transcribe|>Hello,   world.", "hello world"),
    ("I won't go; I can't. I cannot!", "i will not go i can not i can not"),
    ("They're here, we've left, you'll see, I'd go, don't, isn't", "they are here we have left you will see i would go "
                                                                  "do not is not"),
    ("It\u2019s Tom's \"well-being\" at 'noon'", "it's tom's well being at noon"),
    ("It costs 3.5 dollars, or 1,000 in 2024.", "it costs 3.5 dollars or 1000 in 2024"),
    ("  \t\n ", ""),
    ("<SAD>", ""),
])
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


def test_normalize_text_is_idempotent_and_treats_contractions_symmetrically():
    for text in ("I'm here. You're fine!", "<ANGRY> Don't  shout — won't you?"):
        once = normalize_text(text)
        assert normalize_text(once) == once
    assert normalize_text("I'm sure you're fine") == normalize_text("I am sure you are fine")


def test_identical_texts_give_zero():
    refs = ["I'm so sorry to hear that.", "That sounds really hard."]
    assert wer(refs, refs) == 0.0
    assert cer(refs, refs) == 0.0
    assert per_utterance_wer(refs, refs) == [0.0, 0.0]


def test_one_substitution_in_three_words():
    assert wer(["the cat sat"], ["the dog sat"]) == pytest.approx(1 / 3)
    assert per_utterance_wer(["the cat sat"], ["the dog sat"]) == [pytest.approx(1 / 3)]


def test_tags_punctuation_and_case_are_ignored():
    assert wer(["<HAPPY> Hello, World!"], ["hello world"]) == 0.0
    assert wer(["Hello world"], ["<SAD>HELLO... world?!"]) == 0.0
    assert cer(["<HAPPY> Hello, World!"], ["hello world"]) == 0.0


def test_wer_is_corpus_level_not_a_mean_of_utterances():
    refs = ["a b c d", "e"]  # 5 reference words
    hyps = ["a b c d", "x"]  # 1 substitution
    assert wer(refs, hyps) == pytest.approx(1 / 5)
    assert per_utterance_wer(refs, hyps) == [0.0, 1.0]


def test_deletions_and_insertions_count():
    assert wer(["a b c d"], ["a c d"]) == pytest.approx(1 / 4)  # one deletion
    assert wer(["a b"], ["a b c d"]) == pytest.approx(2 / 2)  # two insertions: WER can exceed 0.5
    assert wer(["a b"], ["x y z"]) == pytest.approx(3 / 2)  # 2 substitutions + 1 insertion > 1
    assert wer(["a b"], [""]) == 1.0  # everything deleted


def test_cer_counts_characters_including_spaces():
    assert cer(["abc"], ["abd"]) == pytest.approx(1 / 3)
    assert cer(["ab cd"], ["ab cd"]) == 0.0
    assert cer(["ab cd"], ["abcd"]) == pytest.approx(1 / 5)  # the deleted space is one of 5 characters
    assert cer(["Hello!"], ["hallo"]) == pytest.approx(1 / 5)


def test_single_strings_are_one_item_lists():
    assert wer("The cat sat.", "the dog sat") == pytest.approx(1 / 3)
    assert cer("abc", "abd") == pytest.approx(1 / 3)


def test_empty_references():
    # An empty reference inside a corpus is allowed: its hypothesis words are insertions.
    assert wer(["a b", "<HAPPY>"], ["a b", "x"]) == pytest.approx(1 / 2)
    # When every reference is empty the rate is undefined.
    with pytest.raises(ValueError, match="every reference is empty"):
        wer(["", "<SAD> ..."], ["x", ""])
    with pytest.raises(ValueError, match="every reference is empty"):
        cer([""], [""])
    with pytest.raises(ValueError, match=r"references \[1\] are empty"):
        per_utterance_wer(["a", "!!"], ["a", "b"])


def test_mismatched_or_empty_inputs_raise():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no references"):
        cer([], [])


def test_results_are_plain_floats():
    value = wer(["a b c"], ["a b d"])
    assert isinstance(value, float) and math.isfinite(value)
