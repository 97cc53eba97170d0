"""Bridge targets and losses, and dictation frames, that give the speech side a direct signal (mini world,
training only).

Why: the real system bridges a pre-trained Whisper encoder and a 3 B instruction-tuned LLM that can repeat
what it is given; the mini world's 7 M-parameter LLM, trained through the LLM path alone, never read its
audio (the adapter output collapsed to one vector and the LLM recited corpus sentences; see
docs/hearing.md). The signals here:

- **token CTC on the adapter** (12.5 Hz): the adapter's frames are scored against every text-token
  embedding of the LLM plus a blank (a token adapter's own mixing logits, see
  :data:`echat.models.adapter.TOKEN_OUTPUTS`; otherwise through
  :class:`~echat.models.heads.BridgeHeads`) and trained to
  spell the transcript, then the clip's cue tags;
- **dictation** (stage 0): the LLM answers the understanding tasks from exact token frames of the
  transcript and tags (:func:`dictation_for`), so it learns to copy before any audio reaches it;
- **character CTC and pooled cue classifiers on the encoder**: a probe of what the encoder carries, and a
  training signal for an encoder that trains (read back by :func:`echat.eval.probe.probe`).

The heads (:mod:`echat.models.heads`) live outside :class:`~echat.models.echat.EChat`; here are their
targets (:class:`BridgeTargets`) and losses. :class:`BridgedModel` wraps the model and its heads so that
one forward (and one DDP wrapper) covers them.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from echat.data.schema import Record
from echat.models.adapter import AdapterOutput
from echat.models.echat import EChatOutput
from echat.models.heads import CHARS, BridgeHeads
from echat.tokens import (
    CUE_FIELDS,
    CUE_LABEL_TAGS,
    END_BLOCK,
    IGNORE_INDEX,
    IM_END,
    LABEL_SETS,
    PLAIN_PACK_LAYOUT,
    WORDS_BLOCK,
    asked_fields,
    canonical_label,
)

SHUFFLED = "~shuffled"  # key suffix of a record made by shuffled_words
RANDOM = "~random"  # key suffix of a record made by random_words
RANDOM_TAGS = "~tags"  # key suffix of a record made by random_cues
TAGGED = "~tagged"  # key suffix of a record made by tagged_words
DRILL = "~drill"  # key suffix of a record made by drilled_think: the LLM reads it from exact frames


@dataclass
class BridgeTargets:
    """Per clip of a batch: its token ids (transcript and cue tags in the clip's pack layout, concatenated)
    with their lengths (N,), and one class index per cue field (N,), ``IGNORE_INDEX`` where unknown."""

    tokens: Tensor
    token_lengths: Tensor
    cues: dict[str, Tensor]
    chars: Tensor | None = None  # transcript characters (indices into CHARS), concatenated
    char_lengths: Tensor | None = None  # (N,)
    # like ``tokens``: True where the adapter does not spell the token (a cue tag, the answer's end)
    unspelled: Tensor | None = None

    def to(self, device) -> BridgeTargets:
        move = lambda t: t.to(device) if t is not None else None  # noqa: E731
        return BridgeTargets(move(self.tokens), move(self.token_lengths),
                             {k: v.to(device) for k, v in self.cues.items()}, move(self.chars),
                             move(self.char_lengths), move(self.unspelled))

    def words_only(self) -> BridgeTargets:
        """The same targets with each clip's cue tags (and end frame) dropped from its tokens (an adapter with
        cue frames spells only the words; the tags come from its cue classifiers)."""
        if self.unspelled is None or not bool(self.unspelled.any()):
            return self
        clip = torch.repeat_interleave(torch.arange(len(self.token_lengths), device=self.tokens.device),
                                       self.token_lengths.to(self.tokens.device))  # (tokens,) clip of each
        spelled = ~self.unspelled
        words = torch.bincount(clip[spelled], minlength=len(self.token_lengths))  # (N,)
        return dataclasses.replace(self, tokens=self.tokens[spelled], token_lengths=words.to(self.token_lengths),
                                   unspelled=torch.zeros_like(self.unspelled[spelled]))


def bridge_targets(records: list[Record], tokenizer, pack_layouts: Tensor | None = None) -> BridgeTargets | None:
    """Targets for a batch whose rows each hold one clip spoken from ``extra.q_txt``; None otherwise.
    ``pack_layouts`` (N, blocks): the order of each clip's transcript, cue tags and end (Batch.pack_layouts);
    None = the transcript, then the tags in CUE_FIELDS order."""
    if not records or any(not r.wav or r.history or not r.extra.get("q_txt") for r in records):
        return None
    layouts = pack_layouts.tolist() if pack_layouts is not None else [None] * len(records)
    rows = [_pack_tokens(r, tokenizer, layout) for r, layout in zip(records, layouts, strict=True)]
    cues = {name: torch.tensor([_class_index(name, r.extra.get(key)) for r in records])
            for name, key in CUE_FIELDS.items()}
    chars = [[CHARS.index(c) for c in r.extra["q_txt"].lower() if c in CHARS] for r in records]
    return BridgeTargets(_flat([ids for ids, _ in rows]), torch.tensor([len(ids) for ids, _ in rows]), cues,
                         _flat(chars), torch.tensor([len(row) for row in chars]),
                         torch.tensor([flag for _, flags in rows for flag in flags], dtype=torch.bool))


def _pack_tokens(record: Record, tokenizer, layout: list[int] | None) -> tuple[list[int], list[bool]]:
    """A clip's token ids in its pack ``layout`` (default: the transcript, then CUE_FIELDS order), and
    which of them are cue tags or the answer's end (the text EOS, for END_BLOCK)."""
    ids, unspelled = [], []
    for block in layout if layout is not None else PLAIN_PACK_LAYOUT:
        if block == END_BLOCK:
            piece = [tokenizer.convert_tokens_to_ids(IM_END)]
        else:
            text = record.extra["q_txt"] if block == WORDS_BLOCK else cue_tags(record, [block])
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        unspelled += [block != WORDS_BLOCK] * len(piece)
    return ids, unspelled


def shuffled_words(record: Record, rng: random.Random) -> Record:
    """The record with the words of its spoken transcript (``extra.q_txt``) in a random order, in the
    transcript and at the start of the answer (``txt``), under the key ``<key>~shuffled``; the audio is
    not touched (dictation reads the transcript, not the audio). Records whose answer does not start with
    the transcript (only-P) come back unchanged."""
    spoken = record.extra.get("q_txt") or ""
    words = spoken.split()
    if len(words) < 2 or not record.txt.startswith(spoken):
        return record
    rng.shuffle(words)
    shuffled = " ".join(words)
    return dataclasses.replace(record, key=f"{record.key}{SHUFFLED}", txt=shuffled + record.txt[len(spoken):],
                               extra={**record.extra, "q_txt": shuffled})


def drilled_think(record: Record, rng: random.Random) -> Record:
    """A think record with the words of its spoken transcript (``extra.q_txt``) in a random order, under the
    key ``<key>~drill``: the think's transcript follows, its reply does not (the same words, the same reply);
    the audio is not touched, a :class:`BridgedModel` gives the LLM the record's exact token frames.

    Why: on unseen sentences the think's copy leaves the transcript for the training sentences' words
    (docs/hearing.md §17, §19); a shuffled transcript is predicted by nothing but the frames."""
    words = (record.extra.get("q_txt") or "").split()
    if len(words) < 2:
        return record
    rng.shuffle(words)
    return dataclasses.replace(record, key=f"{record.key}{DRILL}", extra={**record.extra, "q_txt": " ".join(words)})


def random_words(record: Record, rng: random.Random, words: list[str]) -> Record:
    """The record with its spoken transcript (``extra.q_txt``) replaced by as many words drawn at random
    from ``words``, in the transcript and at the start of the answer (``txt``), under the key
    ``<key>~random``; the audio is not touched. Records whose answer does not start with the transcript
    (only-P) come back unchanged.

    Why: neither a memorised sentence nor a bag of its words predicts such an answer; only copying the
    dictated prefix does, so the LLM cannot learn the task by reciting (docs/hearing.md)."""
    spoken = record.extra.get("q_txt") or ""
    if not spoken or not words or not record.txt.startswith(spoken):
        return record
    drawn = " ".join(rng.choice(words) for _ in spoken.split())
    return dataclasses.replace(record, key=f"{record.key}{RANDOM}", txt=drawn + record.txt[len(spoken):],
                               extra={**record.extra, "q_txt": drawn})


def tagged_words(record: Record, rng: random.Random, lead: float = 0.3) -> Record:
    """An ASR record with one to three cue-label tags drawn at random written into its spoken transcript
    (``extra.q_txt``) and its answer (``txt``), under the key ``<key>~tagged``: each glued to the end of a
    random word, or with odds ``lead`` to the start of the first; the audio is not touched. Records whose
    answer is not exactly the transcript come back unchanged.

    Why: dictation copies only what it has copied before. Tags that appear in the copied stream from the
    first step are copied like words, so that a pack laid out as its answer (:func:`echat.tokens.pack_layout`)
    is read by copying it: ASR+P tags 0.93-0.97 from exact frames against the guess without (docs/hearing.md
    E65-E67); a tag at the start of the stream is what an only-P answer copies first."""
    spoken = record.extra.get("q_txt") or ""
    if not spoken or record.txt != spoken:
        return record
    words = spoken.split()
    for _ in range(rng.randint(1, 3)):
        if rng.random() < lead:
            words[0] = rng.choice(CUE_LABEL_TAGS) + words[0]
        else:
            at = rng.randrange(len(words))
            words[at] += rng.choice(CUE_LABEL_TAGS)
    tagged = " ".join(words)
    return dataclasses.replace(record, key=f"{record.key}{TAGGED}", txt=tagged, extra={**record.extra, "q_txt": tagged})


def random_cues(record: Record, rng: random.Random) -> Record:
    """The record with every cue label drawn at random from its field's labels, in ``extra`` and in the
    tags its answer (``txt``) reports, under the key ``<key>~tags``; the audio is not touched (dictation
    reads the labels, not the audio). Records whose task asks for no cue, or whose answer does not end
    with the asked tags, come back unchanged.

    Why: a tag drawn at random is predicted by nothing but the frame that shows it — neither the sentence
    nor the field's most common label — so the LLM learns to read tag frames (docs/hearing.md E47-E48)."""
    asked = asked_fields(record.task)
    if not asked or any(not record.extra.get(CUE_FIELDS[name]) for name in asked):
        return record
    told = "".join(canonical_label(name, record.extra[CUE_FIELDS[name]]) for name in asked)
    if not record.txt.endswith(told):
        return record
    extra = {**record.extra, **{key: rng.choice(LABEL_SETS[name]) for name, key in CUE_FIELDS.items()}}
    drawn = "".join(extra[CUE_FIELDS[name]] for name in asked)
    return dataclasses.replace(record, key=f"{record.key}{RANDOM_TAGS}", txt=record.txt[:-len(told)] + drawn,
                               extra=extra)


@torch.no_grad()
def spread_tag_rows(echat, directions: int = 32, seed: int = 0) -> bool:
    """Set the LLM's cue-label tag rows (input and output embeddings) to distinct rows inside the space its
    word rows span: random orthonormal combinations of the top ``directions`` principal directions of the
    word rows (every token the tokenizer did not add), each at the word rows' mean norm. Returns False,
    changing nothing, when the tokenizer spells the tags in several tokens (they have no rows of their own).

    Why: trained as answers before anything reads them, a field's tag rows collapse onto each other (within-
    field cosine 0.8-0.98, docs/hearing.md E30, E45), and a collapsed tag frame cannot be read (E49-E51).
    Orthonormal rows at the words' scale are read at one place (E52); inside the word span the copying
    circuit that stage 0 formed on words reads all four fields at once (E56: 50 steps against 250 for
    rows outside it, E55)."""
    tokenizer = echat.tokenizer
    try:
        tags = torch.cat(list(echat.cue_token_ids().values()))
    except ValueError:  # the tags are split into word pieces
        return False
    added = set(tokenizer.added_tokens_encoder.values())
    words = torch.tensor([i for i in range(len(tokenizer)) if i not in added], device=tags.device)
    table = echat.llm.get_input_embeddings().weight  # (V, H)
    head = echat.llm.get_output_embeddings().weight
    rows = table[words].float()  # (W, H)
    _, _, basis = torch.linalg.svd(rows - rows.mean(0), full_matrices=False)  # (min(W, H), H)
    k = min(max(directions, len(tags)), basis.shape[0])
    mix, _ = torch.linalg.qr(torch.randn(k, len(tags), generator=torch.Generator().manual_seed(seed)))  # (k, T)
    spread = mix.T.to(basis.device) @ basis[:k]  # (T, H), orthonormal rows
    spread = spread * rows.norm(dim=1).mean()
    for weights in (table, head) if head is not table else (table,):
        weights[tags] = spread.to(weights.dtype)
    return True


def corpus_words(records: list[Record]) -> list[str]:
    """The distinct words of the records' spoken transcripts (``extra.q_txt``), sorted."""
    return sorted({word for r in records for word in (r.extra.get("q_txt") or "").split()})


def cue_tags(record: Record, order: list[int] | None = None) -> str:
    """The clip's known cue tags in ``order`` (indices into CUE_FIELDS; default CUE_FIELDS order): in the
    token targets the frames that spell the words also spell how they were said."""
    fields = list(CUE_FIELDS.items())
    chosen = [fields[i] for i in order] if order is not None else fields
    return "".join(canonical_label(name, record.extra[key]) for name, key in chosen
                   if record.extra.get(key) and canonical_label(name, record.extra[key]) in LABEL_SETS[name])


def _flat(rows: list[list[int]]) -> Tensor:
    return torch.tensor([i for row in rows for i in row], dtype=torch.long)


def _class_index(name: str, value) -> int:
    labels = LABEL_SETS[name]
    tag = canonical_label(name, value) if value else ""
    return labels.index(tag) if tag in labels else IGNORE_INDEX


def packed_dictation_clips(targets: BridgeTargets, lengths: Tensor, table: Tensor) -> AdapterOutput:
    """Pseudo adapter frames as a ``token_pack`` adapter makes them: each clip's target tokens (words, then
    cue tags) one per frame from the first, then zero frames. targets: tokens of N clips; lengths (N,)
    adapter frames per clip; table (V, H). Returns frames (N, max(lengths), H); a clip with more tokens
    than frames gets its first ``length`` tokens."""
    frames = table.new_zeros(len(lengths), int(lengths.max()), table.shape[1])
    starts = torch.cumsum(targets.token_lengths, 0) - targets.token_lengths
    for i, (start, count, length) in enumerate(zip(starts.tolist(), targets.token_lengths.tolist(),
                                                   lengths.tolist(), strict=True)):
        kept = min(count, length)
        frames[i, :kept] = table[targets.tokens[start:start + kept]]
    return AdapterOutput(frames, lengths)


def dictation_clips(targets: BridgeTargets, lengths: Tensor, table: Tensor, blank: Tensor) -> AdapterOutput:
    """Pseudo adapter frames that spell each clip's tokens the way a CTC-trained token-mix adapter does:
    each target token (words, then cue tags) held for 1-3 frames, with blank frames between and around.

    Why: stage 0 teaches the tiny LLM to read such a prefix ("dictation"), as a real instruction-tuned
    LLM can repeat what it is given; stage 1 then only has to make the adapter spell the audio.
    targets: tokens of N clips; lengths (N,) adapter frames per clip; table (V, H); blank (H,).
    Returns frames (N, max(lengths), H) and lengths; a clip with more tokens than frames gets its first
    ``length`` tokens, one frame each."""
    frames = table.new_zeros(len(lengths), int(lengths.max()), table.shape[1])
    frames[:] = blank
    starts = torch.cumsum(targets.token_lengths, 0) - targets.token_lengths
    for i, (start, count, length) in enumerate(zip(starts.tolist(), targets.token_lengths.tolist(),
                                                   lengths.tolist(), strict=True)):
        tokens = targets.tokens[start:start + min(count, length)]
        holds = torch.randint(1, 4, (len(tokens),))
        while int(holds.sum()) > length and int(holds.max()) > 1:
            holds = holds.clamp(max=int(holds.max()) - 1)
        spare = length - int(holds.sum())
        gaps = torch.multinomial(torch.ones(len(tokens) + 1), spare, replacement=True).bincount(
            minlength=len(tokens) + 1) if spare > 0 else torch.zeros(len(tokens) + 1, dtype=torch.long)
        position = int(gaps[0])
        for token, hold, gap in zip(tokens.tolist(), holds.tolist(), gaps[1:].tolist(), strict=True):
            frames[i, position:position + hold] = table[token]
            position += hold + gap
    return AdapterOutput(frames, lengths)


def dictation_for(echat, feat_lengths: Tensor, targets: BridgeTargets) -> AdapterOutput:
    """The dictation frames ``echat``'s adapter would be trained to give for clips of ``feat_lengths``
    (N,) log-mel frames: packed for a ``token_pack`` adapter, spread over the clip otherwise."""
    lengths = echat.adapter.output_lengths(echat.encoder.output_lengths(feat_lengths))
    table = echat.llm.get_input_embeddings().weight
    if echat.adapter.output == "token_pack":
        clips = packed_dictation_clips(targets, lengths, table)
        counts = torch.minimum(targets.token_lengths.to(lengths.device), lengths)
        return clips._replace(embeddings=echat.adapter.finish_pack(clips.embeddings, counts, lengths))
    blank = getattr(echat.adapter, "blank", None)
    return dictation_clips(targets, lengths, table, blank if blank is not None else table.new_zeros(()))


def token_ctc_loss(logits: Tensor, lengths: Tensor, targets: BridgeTargets) -> Tensor:
    """CTC of adapter logits (N, T, V + 1) over the text tokens (blank last) against the spoken tokens
    and cue tags of :class:`BridgeTargets`; mean per target token."""
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, N, V + 1)
    return F.ctc_loss(log_probs, targets.tokens, lengths, targets.token_lengths, blank=logits.shape[-1] - 1,
                      zero_infinity=True)


def cue_frame_losses(cue_logits: dict[str, Tensor], targets: BridgeTargets) -> dict[str, Tensor]:
    """Cross-entropy of an adapter's cue classifiers (field -> (N, labels)) against the clips' labels, as
    ``cue_frame_<field>``; fields without a known label in the batch are left out."""
    out = {}
    for name, logits in cue_logits.items():
        labels = targets.cues.get(name)
        if labels is not None and bool((labels != IGNORE_INDEX).any()):
            out[f"cue_frame_{name}"] = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
    return out


class BridgedModel(nn.Module):
    """EChat plus its bridge heads; ``forward(batch, targets)`` adds ``weight`` x the auxiliary losses."""

    def __init__(self, echat: nn.Module, weight: float, token_ctc: bool = True, dictation: bool = False):
        super().__init__()
        self.echat = echat
        self.heads = BridgeHeads(echat.config.encoder.d_model, echat.config.llm.hidden_size)
        self.weight = weight
        self.token_ctc = token_ctc
        self.dictation = dictation  # stage 0: the LLM reads dictation_clips instead of the audio

    @property
    def config(self):
        return self.echat.config

    def forward(self, batch, targets: BridgeTargets | None = None, bridge_only: bool = False):
        """The EChat output, its ``loss`` raised by the auxiliary terms; those go to ``out.aux``.
        ``bridge_only`` skips the LLM: the loss is the auxiliary terms alone."""
        if targets is None or not batch.feats.shape[0]:
            if bridge_only:
                raise ValueError(f"a bridge-only step needs clips with transcripts (batch {batch.keys[:3]})")
            return self.echat(batch)
        if self.dictation:
            return self.echat(batch, clips=dictation_for(self.echat, batch.feat_lengths, targets))
        enc = self.echat.run_encoder(batch.feats, batch.feat_lengths)
        clips = self.echat.adapt(enc, batch.pack_layouts, batch.feats, batch.feat_lengths)
        clips = self._with_drills(clips, batch, targets)
        if bridge_only:
            zero = torch.zeros((), device=batch.feats.device)
            out = EChatOutput(zero, zero, zero, 0, 0, 0, 0, audio=clips)
        else:
            out = self.echat(batch, clips=clips)
        if not self.weight:
            out.aux = {}
            return out
        out.aux = {"char_ctc": self.heads.char_ctc_loss(enc.hidden, enc.lengths, targets.chars, targets.char_lengths),
                   **self.heads.cue_losses(enc.hidden, enc.lengths, targets.cues)}
        if self.token_ctc and clips.token_logits is not None:  # a token-mix adapter's own mixing weights
            spelled = targets.words_only() if clips.cue_logits is not None else targets
            out.aux["token_ctc"] = token_ctc_loss(clips.token_logits, clips.lengths, spelled)
            out.aux.update(cue_frame_losses(clips.cue_logits or {}, targets))
        elif self.token_ctc:
            table = self.echat.llm.get_input_embeddings().weight.detach()  # the adapter moves, not the LLM
            out.aux["token_ctc"] = self.heads.ctc_loss(clips.embeddings, clips.lengths, table, targets.tokens,
                                                       targets.token_lengths)
        out.loss = out.loss + self.weight * sum(out.aux.values())
        return out

    def _with_drills(self, clips: AdapterOutput, batch, targets: BridgeTargets) -> AdapterOutput:
        """``clips`` with the rows of drilled records (key suffix DRILL) replaced by their dictation frames."""
        drilled = torch.tensor([key.endswith(DRILL) for key in batch.keys], device=clips.embeddings.device)
        if not bool(drilled.any()):
            return clips
        exact = dictation_for(self.echat, batch.feat_lengths, targets).embeddings
        if exact.shape != clips.embeddings.shape:
            raise ValueError(f"dictation frames {tuple(exact.shape)} do not match the adapter's "
                             f"{tuple(clips.embeddings.shape)} (batch {batch.keys[:3]})")
        return clips._replace(embeddings=torch.where(drilled[:, None, None], exact.to(clips.embeddings.dtype),
                                                     clips.embeddings))
