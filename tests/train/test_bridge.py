"""The bridge losses: targets from records, a CTC that rewards frames shaped like the spoken tokens,
cue heads that learn, and a model checkpoint untouched by the heads."""

import dataclasses

import pytest
import torch

from echat.data.pipeline import DataPipeline, load_split
from echat.models.heads import CHARS
from echat.tokens import IGNORE_INDEX, LABEL_SETS
from echat.train.bridge import BridgedModel, BridgeTargets, bridge_targets
from echat.train.recipes import family
from echat.train.run import _model


@pytest.fixture(scope="module")
def asr_samples(smoke_corpus):
    model = _model("smoke", smoke_corpus, None)
    samples = load_split(smoke_corpus, "train", model.config)
    return model, [s for s in samples if family(s.record) in ("asr", "asrp", "only_p")][:6]


def test_targets_hold_the_transcript_tokens_and_one_class_per_cue(asr_samples):
    model, samples = asr_samples
    records = [s.record for s in samples]
    targets = bridge_targets(records, model.tokenizer)
    first = model.tokenizer(records[0].extra["q_txt"], add_special_tokens=False)["input_ids"]
    assert targets.tokens[: len(first)].tolist() == first
    assert int(targets.token_lengths.sum()) == targets.tokens.numel()
    assert LABEL_SETS["gender"][int(targets.cues["gender"][0])] == records[0].extra["gender"]
    assert all(int(v.min()) >= 0 for v in targets.cues.values())


def test_words_only_targets_drop_each_clips_cue_tags(asr_samples):
    from echat.train.bridge import cue_frame_losses, cue_tags

    model, samples = asr_samples
    records = [s.record for s in samples[:3]]
    targets = bridge_targets(records, model.tokenizer)
    words = targets.words_only()
    expected = [model.tokenizer(r.extra["q_txt"], add_special_tokens=False)["input_ids"] for r in records]
    assert words.token_lengths.tolist() == [len(row) for row in expected]
    assert words.tokens.tolist() == [i for row in expected for i in row]
    tags = [len(model.tokenizer(cue_tags(r), add_special_tokens=False)["input_ids"]) for r in records]
    assert int(targets.unspelled.sum()) == sum(tags) and all(n == 4 for n in tags)  # one token per cue tag
    logits = {name: torch.zeros(3, len(LABEL_SETS[name])) for name in targets.cues}
    logits["gender"][torch.arange(3), targets.cues["gender"]] = 20.0  # a sure, right gender classifier
    losses = cue_frame_losses(logits, targets)
    assert set(losses) == {f"cue_frame_{name}" for name in targets.cues}
    assert float(losses["cue_frame_gender"]) < 1e-6 < float(losses["cue_frame_age"])


def test_no_targets_for_rows_without_a_spoken_transcript(asr_samples):
    model, samples = asr_samples
    text_only = dataclasses.replace(samples[0].record, wav=None)
    assert bridge_targets([samples[0].record, text_only], model.tokenizer) is None
    unknown = dataclasses.replace(samples[0].record, extra={**samples[0].record.extra, "caption": "<BIRDSONG>"})
    assert int(bridge_targets([unknown], model.tokenizer).cues["event"][0]) == IGNORE_INDEX


def test_character_targets_spell_the_transcript(asr_samples):
    model, samples = asr_samples
    record = dataclasses.replace(samples[0].record, extra={**samples[0].record.extra, "q_txt": "it's OK!"})
    targets = bridge_targets([record], model.tokenizer)
    assert "".join(CHARS[i] for i in targets.chars.tolist()) == "it's ok"
    assert targets.char_lengths.tolist() == [7]


def test_bridged_forward_adds_the_auxiliary_losses_and_keeps_the_model_keys(asr_samples):
    model, samples = asr_samples
    model.eval()
    keys = set(model.state_dict())
    bridged = BridgedModel(model, weight=0.5)
    pipeline = DataPipeline(model.config, model.tokenizer, train=False)
    batch = next(iter(pipeline.batches(samples)))
    targets = bridge_targets([next(s.record for s in samples if s.record.key == k) for k in batch.keys],
                             model.tokenizer)
    plain = model(batch)
    out = bridged(batch, targets)
    assert set(out.aux) == {"char_ctc", "token_ctc", "gender", "age", "emotion", "event"}
    expected = plain.loss + 0.5 * sum(out.aux.values())
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)
    assert set(bridged.echat.state_dict()) == keys


def test_random_words_replace_the_transcript_in_the_answer_and_the_targets(asr_samples):
    import random

    from echat.train.bridge import RANDOM, corpus_words, random_words

    model, samples = asr_samples
    words = corpus_words([s.record for s in samples])
    assert words == sorted(set(words)) and "" not in words
    asrp = next(s.record for s in samples if family(s.record) == "asrp")
    spoken = asrp.extra["q_txt"]
    drills = [random_words(asrp, random.Random(seed), words) for seed in range(3)]
    for drill in drills:
        assert drill.key == asrp.key + RANDOM and drill.wav == asrp.wav
        assert len(drill.extra["q_txt"].split()) == len(spoken.split())
        assert set(drill.extra["q_txt"].split()) <= set(words)
        assert drill.txt == drill.extra["q_txt"] + asrp.txt[len(spoken):]  # the tags stay after the words
    assert len({d.extra["q_txt"] for d in drills}) == 3
    only_p = next(s.record for s in samples if family(s.record) == "only_p")
    assert random_words(only_p, random.Random(0), words) is only_p


def test_packed_dictation_spells_each_clip_from_its_first_frame():
    from echat.train.bridge import packed_dictation_clips

    table = torch.randn(20, 6)  # (V, H)
    targets = BridgeTargets(torch.tensor([3, 7, 7, 12, 5, 1, 2, 9]), torch.tensor([4, 4]), {})
    clips = packed_dictation_clips(targets, torch.tensor([6, 3]), table)
    assert clips.embeddings.shape == (2, 6, 6)
    assert torch.equal(clips.embeddings[0, :4], table[torch.tensor([3, 7, 7, 12])])
    assert not clips.embeddings[0, 4:].any()
    assert torch.equal(clips.embeddings[1, :3], table[torch.tensor([5, 1, 2])])  # cut to the clip's 3 frames
    assert not clips.embeddings[1, 3:].any()


def test_shuffled_words_reorder_the_transcript_in_the_answer_and_the_targets(asr_samples):
    import random

    from echat.train.bridge import SHUFFLED, shuffled_words

    model, samples = asr_samples
    asrp = next(s.record for s in samples if family(s.record) == "asrp")
    drill = shuffled_words(asrp, random.Random(0))
    spoken = asrp.extra["q_txt"]
    assert drill.key == asrp.key + SHUFFLED and drill.wav == asrp.wav
    assert sorted(drill.extra["q_txt"].split()) == sorted(spoken.split()) and drill.extra["q_txt"] != spoken
    assert drill.txt == drill.extra["q_txt"] + asrp.txt[len(spoken):]  # the tags stay after the words
    only_p = next(s.record for s in samples if family(s.record) == "only_p")
    assert shuffled_words(only_p, random.Random(0)) is only_p


def test_tagged_words_write_random_tags_into_an_asr_transcript(asr_samples):
    import random

    from echat.train.bridge import TAGGED, tagged_words

    model, samples = asr_samples
    asr = next(s.record for s in samples if family(s.record) == "asr")
    tags = {tag for labels in LABEL_SETS.values() for tag in labels}
    rng = random.Random(0)
    drills = [tagged_words(asr, rng) for _ in range(30)]
    for drill in drills:
        assert drill.key == asr.key + TAGGED and drill.wav == asr.wav and drill.txt == drill.extra["q_txt"]
        ids = model.tokenizer(drill.txt, add_special_tokens=False)["input_ids"]
        written = [t for t in model.tokenizer.convert_ids_to_tokens(ids) if t in tags]  # one token per tag
        assert 1 <= len(written) <= 3
        plain = drill.txt
        for tag in written:
            plain = plain.replace(tag, "", 1)
        assert plain == asr.txt  # the words are untouched
    assert any(d.txt.startswith("<") for d in drills)  # sometimes a tag leads the transcript
    asrp = next(s.record for s in samples if family(s.record) == "asrp")
    assert tagged_words(asrp, rng) is asrp  # only an answer that is the transcript alone


def test_random_cues_redraw_the_labels_and_the_tags_the_answer_reports(asr_samples):
    import random

    from echat.tokens import CUE_FIELDS, asked_fields
    from echat.train.bridge import RANDOM_TAGS, random_cues

    _, samples = asr_samples
    rng = random.Random(0)
    asked = [s.record for s in samples if asked_fields(s.record.task)]
    assert asked
    for record in asked:
        drills = [random_cues(record, rng) for _ in range(20)]
        for drill in drills:
            assert drill.key == record.key + RANDOM_TAGS and drill.wav == record.wav
            fields = asked_fields(record.task)
            tags = "".join(drill.extra[CUE_FIELDS[name]] for name in fields)
            told = "".join(record.extra[CUE_FIELDS[name]] for name in fields)
            assert drill.txt == record.txt.removesuffix(told) + tags  # the transcript, then the drawn tags
            assert all(drill.extra[key] in LABEL_SETS[name] for name, key in CUE_FIELDS.items())
        assert len({d.extra["gender"] for d in drills}) == 2  # both genders drawn in 20 tries
    plain = next(s.record for s in samples if not asked_fields(s.record.task))
    assert random_cues(plain, rng) is plain  # ASR asks for no cue


def test_bridge_targets_follow_each_clips_pack_layout(asr_samples):
    from echat.tokens import WORDS_BLOCK
    from echat.train.bridge import cue_tags

    model, samples = asr_samples
    record = samples[0].record
    words = model.tokenizer(record.extra["q_txt"], add_special_tokens=False)["input_ids"]
    canonical = model.tokenizer(cue_tags(record), add_special_tokens=False)["input_ids"]  # CUE_FIELDS order
    targets = bridge_targets([record], model.tokenizer, torch.tensor([[3, 2, WORDS_BLOCK, 1, 0]]))
    assert targets.tokens.tolist() == canonical[3:1:-1] + words + canonical[1::-1]
    assert targets.unspelled.tolist() == [True] * 2 + [False] * len(words) + [True] * 2
    spelled = targets.words_only()
    assert spelled.tokens.tolist() == words and spelled.token_lengths.tolist() == [len(words)]


def test_spread_tag_rows_makes_the_tags_distinct_inside_the_word_span(smoke_corpus):
    from echat.train.bridge import spread_tag_rows

    model = _model("smoke", smoke_corpus, None)
    tags = torch.cat(list(model.cue_token_ids().values()))
    table = model.llm.get_input_embeddings().weight
    table.data[tags] = table.data[tags[0]].clone()  # collapsed: every tag the same row
    assert spread_tag_rows(model, directions=32)
    rows = table[tags]
    norms = rows.norm(dim=1)
    cosine = torch.nn.functional.normalize(rows, dim=1) @ torch.nn.functional.normalize(rows, dim=1).T
    assert torch.allclose(cosine, torch.eye(len(tags)), atol=1e-4)  # orthogonal
    added = set(model.tokenizer.added_tokens_encoder.values())
    words = table[[i for i in range(len(model.tokenizer)) if i not in added]]
    assert torch.allclose(norms, words.norm(dim=1).mean().expand_as(norms), rtol=1e-4)
    centred = words - words.mean(0)
    _, _, basis = torch.linalg.svd(centred, full_matrices=False)
    inside = rows @ basis[:32].T @ basis[:32]  # the part within the top 32 word directions
    assert torch.allclose(inside, rows, atol=1e-4)
    assert model.llm.get_output_embeddings().weight[tags].equal(rows)  # tied: the answers move too


@pytest.mark.parametrize("task", ["<TRANSCRIBE>", "<TRANSCRIBE> <EMOTION> <AGE> <GENDER>",
                                  "<TRANSCRIBE> <CAPTION>", "<GENDER>", "<EMOTION>", "<AGE> <GENDER>"])
def test_the_mini_pack_starts_with_the_answer_so_that_copying_answers(smoke_corpus, task):
    """With the mini preset's layout every understanding answer, then its end (the text EOS), is the start
    of its clip's pack: the LLM answers any of them, and stops, by copying from the first frame
    (docs/hearing.md E65-E68, §14)."""
    from echat.config import preset
    from echat.eval.hearing import distinct_clips
    from echat.sequence import clip_pack_layouts
    from echat.tokens import CUE_FIELDS, FIELD_OF_TASK_TAG, IM_END, TRANSCRIBE, OutputType, canonical_label

    model = _model("smoke", smoke_corpus, None)
    layout = torch.tensor(clip_pack_layouts(preset("mini"), task, OutputType.TEXT, 1))  # (1, fields + 2)
    for clip in distinct_clips(load_split(smoke_corpus, "train", model.config))[:4]:
        extra = clip.record.extra
        tags = "".join(canonical_label(FIELD_OF_TASK_TAG[p], extra[CUE_FIELDS[FIELD_OF_TASK_TAG[p]]])
                       for p in task.split() if p in FIELD_OF_TASK_TAG)
        answer = (extra["q_txt"] if TRANSCRIBE in task.split() else "") + tags
        record = dataclasses.replace(clip.record, task=task, txt=answer)
        targets = bridge_targets([record], model.tokenizer, layout)
        ids = model.tokenizer(answer + IM_END, add_special_tokens=False)["input_ids"]
        assert targets.tokens[:len(ids)].tolist() == ids, (task, answer)
        assert int(targets.unspelled.sum()) == len(CUE_FIELDS) + 1  # the tags and the end are not spelled


def test_a_think_drill_shuffles_the_spoken_words_and_keeps_the_reply(smoke_corpus):
    import random

    from echat.train.bridge import DRILL, drilled_think

    model = _model("smoke", smoke_corpus, None)
    think = next(s.record for s in load_split(smoke_corpus, "train", model.config) if family(s.record) == "s2t_think"
                 and len(s.record.extra["q_txt"].split()) > 3)
    drill = drilled_think(think, random.Random(0))
    assert drill.key == think.key + DRILL and drill.wav == think.wav and drill.txt == think.txt
    assert sorted(drill.extra["q_txt"].split()) == sorted(think.extra["q_txt"].split())
    assert drill.extra["q_txt"] != think.extra["q_txt"]
    one_word = dataclasses.replace(think, extra={**think.extra, "q_txt": "hello"})
    assert drilled_think(one_word, random.Random(0)) is one_word


def test_drilled_rows_read_their_exact_frames_and_the_others_the_audio(asr_samples, smoke_corpus):
    from echat.data.pipeline import DataPipeline
    from echat.train.bridge import DRILL, dictation_for

    shared, samples = asr_samples
    model = _model("smoke", smoke_corpus, None).eval()  # no dropout: the frames of two calls can be compared
    assert model.config == shared.config
    pipe = DataPipeline(model.config, model.tokenizer, train=False)
    batch = next(iter(pipe.batches(samples[:4])))
    records = {s.record.key: s.record for s in samples}
    targets = bridge_targets([records[k] for k in batch.keys], model.tokenizer, batch.pack_layouts)
    assert len(batch.keys) > 1
    batch = dataclasses.replace(batch, keys=[batch.keys[0] + DRILL, *batch.keys[1:]])
    bridged = BridgedModel(model, weight=0.0)
    enc = model.run_encoder(batch.feats, batch.feat_lengths)
    heard = model.adapt(enc, batch.pack_layouts, batch.feats, batch.feat_lengths)
    torch.manual_seed(0)  # the smoke adapter's dictation spreads the tokens at random
    mixed = bridged._with_drills(heard, batch, targets)
    torch.manual_seed(0)
    exact = dictation_for(model, batch.feat_lengths, targets)
    assert torch.equal(mixed.embeddings[0], exact.embeddings[0])
    assert torch.equal(mixed.embeddings[1:], heard.embeddings[1:])
    assert not torch.equal(exact.embeddings[0], heard.embeddings[0])
