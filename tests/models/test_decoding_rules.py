"""The reference's age rule (OSUM_chat_LogitsProcessor), by token strings through the tokenizer."""

import torch

from echat.config import GenerationOptions, preset
from echat.models.generate import ChoiceAfter, text_processors


def test_the_age_rule_in_qwen_ids_is_the_references(qwen):
    rule = ChoiceAfter.age_rule(qwen)
    assert (rule.prefix, rule.allowed) == ([102185, 17714, 31252], [99119, 1808, 7863])


def test_after_the_prefix_only_the_choices_may_follow_and_only_once():
    rule = ChoiceAfter([5, 6, 7], [1, 3])
    scores = torch.zeros(1, 10)
    assert torch.equal(rule(torch.tensor([[9, 5, 6]]), scores), scores)  # not yet
    forced = rule(torch.tensor([[9, 5, 6, 7]]), scores)
    assert torch.isfinite(forced[0]).nonzero().flatten().tolist() == [1, 3]
    assert torch.equal(rule(torch.tensor([[5, 6, 7]]), scores), scores)  # once per generation


class _Model:
    def __init__(self, name, tokenizer):
        self.config, self.tokenizer = preset(name), tokenizer


def test_the_rule_is_on_by_default_with_the_qwenenizer_only(qwen, mini_tok):
    assert isinstance(text_processors(_Model("osum-echat", qwen), GenerationOptions(), [])[0], ChoiceAfter)
    assert list(text_processors(_Model("mini", mini_tok), GenerationOptions(), [])) == []
    assert list(text_processors(_Model("osum-echat", qwen), GenerationOptions(age_rule=False), [])) == []
