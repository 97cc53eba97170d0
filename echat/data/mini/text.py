"""EChat-mini's words: user sentences, cue-dependent empathetic replies, think paragraphs, T2T pairs.

Design choices:
- Slot-filled templates give thousands of distinct sentences, so a tiny LM cannot guess whole
  transcripts from its prior; the sentences are emotionally *ambiguous* ("I finally finished the
  report"), so the right reply depends on how they are said.
- The reply is a pure function of (sentence, cues): the reply emotion follows the user's emotion and
  sound event (:func:`reply_emotion`), the wording follows the reply emotion, the age and the event.
  This makes "the right reply depends on how something is said" measurable.
- Every choice that is not a function of the cues is drawn from a seeded ``random.Random``.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass

# (template, slot values, topic phrase used by replies: "{x}" is the slot value)
TEMPLATES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("I finally finished {x}.", ("the report", "my thesis", "the painting", "the garden fence", "the puzzle",
                                 "the big presentation", "my first novel", "the kitchen shelves"), "finishing {x}"),
    ("My {x} is coming to visit tomorrow.", ("sister", "brother", "grandmother", "uncle", "best friend",
                                             "cousin", "old teacher", "neighbour"), "your {x}'s visit"),
    ("I just got my {x} back.", ("test results", "exam grades", "blood test", "essay", "driving test score",
                                 "medical report", "job application", "math quiz"), "your {x}"),
    ("We are moving to {x} next month.", ("a new city", "the countryside", "another country", "a small flat",
                                         "my parents' house", "the coast", "a bigger house", "the north"),
     "the move to {x}"),
    ("I lost my {x} on the train.", ("wallet", "phone", "keys", "favourite scarf", "notebook", "umbrella",
                                     "headphones", "library book"), "your {x}"),
    ("The dog chewed up my {x}.", ("new shoes", "homework", "sofa cushion", "glasses case", "slippers",
                                   "garden hose", "teddy bear", "backpack"), "your {x}"),
    ("I have a job interview {x}.", ("tomorrow morning", "on Monday", "this afternoon", "next week",
                                     "in an hour", "on Friday", "tonight", "after lunch"), "the interview {x}"),
    ("Our team lost the {x} yesterday.", ("football match", "quiz night", "chess final", "relay race",
                                          "debate", "basketball game", "spelling contest", "tennis cup"),
     "the {x}"),
    ("My {x} broke down again.", ("car", "washing machine", "laptop", "bicycle", "fridge", "heater",
                                  "old radio", "printer"), "your {x}"),
    ("I got a letter from {x} today.", ("the bank", "my old school", "the hospital", "my landlord",
                                        "a lawyer", "my pen pal", "the council", "my grandfather"),
     "the letter from {x}"),
    ("They cancelled the {x}.", ("school trip", "concert", "wedding party", "flight", "picnic",
                                 "birthday dinner", "football training", "museum visit"), "the {x}"),
    ("I have to speak in front of {x}.", ("the whole school", "my class", "two hundred people", "the board",
                                          "the city council", "my colleagues", "the parents", "the judges"),
     "speaking in front of {x}"),
    ("My {x} is in the hospital.", ("father", "mother", "little brother", "grandfather", "best friend",
                                    "aunt", "husband", "wife"), "your {x}"),
    ("I won {x}.", ("a prize in the lottery", "the school race", "a free holiday", "the drawing contest",
                    "a new bicycle", "the cooking competition", "two concert tickets", "the chess game"),
     "winning {x}"),
    ("Someone ate my {x} from the fridge.", ("lunch", "birthday cake", "sandwich", "chocolate", "pizza",
                                             "yoghurt", "leftover pasta", "apple pie"), "your {x}"),
    ("I start at a new {x} on Monday.", ("school", "job", "office", "club", "university", "team",
                                         "dance class", "hospital ward"), "the new {x}"),
    ("My {x} forgot my birthday.", ("husband", "wife", "best friend", "brother", "sister", "son",
                                    "daughter", "boss"), "your {x} forgetting"),
    ("The storm broke our {x}.", ("window", "garden shed", "old tree", "fence", "roof tiles", "greenhouse",
                                  "satellite dish", "front gate"), "the {x}"),
    ("I saw a {x} in the garden.", ("snake", "fox", "huge spider", "baby deer", "hedgehog", "rat",
                                    "strange cat", "wild boar"), "the {x}"),
    ("My {x} just had a baby.", ("sister", "cousin", "best friend", "neighbour", "daughter", "colleague",
                                 "brother's wife", "old friend"), "your {x}'s baby"),
    ("I failed my {x}.", ("driving test", "piano exam", "history exam", "swimming test", "final exam",
                          "job trial", "math test", "language course"), "your {x}"),
    ("The doctor called about my {x}.", ("scan", "heart", "test results", "knee", "eyes", "back pain",
                                         "allergy test", "operation"), "your {x}"),
    ("I am going to {x} alone.", ("the city", "a concert", "another country", "the mountains", "a party",
                                  "the hospital", "the new school", "the seaside"), "going to {x} alone"),
    ("We adopted a {x}.", ("puppy", "kitten", "rabbit", "parrot", "little girl", "baby boy", "tortoise",
                           "hamster"), "the {x}"),
)

# Openers multiply the sentences (24 templates x 8 slots x 8 openers = 1,536 distinct sentences).
OPENERS = ("", "You know what, ", "Guess what, ", "So, ", "Well, ", "Honestly, ", "Listen, ", "Oh, ")

# Reply emotions (mini names of tokens.REPLY_EMOTION_PAIRS) chosen from the user's emotion...
REPLY_FOR_EMOTION = {
    "<NEUTRAL>": "<NEUTRAL>", "<HAPPY>": "<HAPPY>", "<SAD>": "<COMFORTING>", "<ANGRY>": "<SORRY>",
    "<FEAR>": "<COMFORTING>", "<SURPRISE>": "<SURPRISED>",
}
# ... unless a sound event says more.
REPLY_FOR_EVENT = {"<CRY>": "<COMFORTING>", "<SCREAM>": "<AFRAID>", "<LAUGH>": "<DELIGHTED>"}

REPLY_FRAMES = {
    "<NEUTRAL>": ("I see, {t}. How do you feel about it?", "Thanks for telling me about {t}."),
    "<HAPPY>": ("Wonderful news about {t}! I am so happy for you.", "How exciting, {t}! Well done."),
    "<DELIGHTED>": ("Your laugh says it all, {t} sounds fun!", "I love hearing you laugh about {t}!"),
    "<COMFORTING>": ("I am sorry about {t}. I am here for you.", "That sounds hard, {t}. You are not alone."),
    "<SORRY>": ("I am sorry {t} made you so angry.", "I understand why {t} upsets you. Let us fix it."),
    "<SURPRISED>": ("Wow, {t}? I did not see that coming!", "Really, {t}? What a surprise!"),
    "<AFRAID>": ("Are you okay? That scream scared me!", "Oh no, are you safe? What happened?"),
}
EVENT_OPENERS = {
    "<COUGH>": "That cough sounds bad.", "<SNEEZE>": "Bless you!", "<SIGH>": "That was a big sigh.",
    "<THROAT_CLEARING>": "Have some water.", "<CRY>": "Oh, please do not cry.",
}
AGE_CLOSERS = {"<CHILD>": "You are a brave kid.", "<OLD>": "Please take care of yourself.", "<ADULT>": ""}

_AGE_WORDS = {"<CHILD>": "a child", "<ADULT>": "an adult", "<OLD>": "an elderly person"}
_GENDER_WORDS = {("<CHILD>", "<MALE>"): "boy", ("<CHILD>", "<FEMALE>"): "girl",
                 ("<ADULT>", "<MALE>"): "man", ("<ADULT>", "<FEMALE>"): "woman",
                 ("<OLD>", "<MALE>"): "man", ("<OLD>", "<FEMALE>"): "woman"}
_EMOTION_VOICE = {
    "<NEUTRAL>": ("in a calm, even voice", "they sound matter-of-fact"),
    "<HAPPY>": ("in a bright, lively voice", "they sound happy about it"),
    "<SAD>": ("slowly, in a low and quiet voice", "they sound sad"),
    "<ANGRY>": ("loudly, fast and sharply", "they sound angry"),
    "<FEAR>": ("quickly, in a tense, high voice", "they sound frightened"),
    "<SURPRISE>": ("with a sudden jump in pitch", "they sound surprised"),
}
_EVENT_WORDS = {
    "<LAUGH>": "while laughing", "<COUGH>": "with a cough", "<CRY>": "while crying", "<SIGH>": "after a sigh",
    "<SNEEZE>": "with a sneeze", "<THROAT_CLEARING>": "after clearing their throat", "<SCREAM>": "with a scream",
}
_INTENT = {
    "<NEUTRAL>": "so I should answer plainly and ask how they feel",
    "<HAPPY>": "so I should share their joy",
    "<DELIGHTED>": "so I should enjoy the moment with them",
    "<COMFORTING>": "so I should comfort them gently",
    "<SORRY>": "so I should acknowledge their anger and stay calm",
    "<SURPRISED>": "so I should share their surprise",
    "<AFRAID>": "so I should first make sure they are safe",
}

T2T_PAIRS = (
    ("What is a good way to relax after work?", "A short walk, a warm drink and some quiet music help many people."),
    ("How can I sleep better?", "Keep a regular bedtime, avoid screens late at night and keep your room cool."),
    ("How do I make a friend at a new school?", "Say hello, ask about their interests and join a club."),
    ("What should I pack for a picnic?", "Bring sandwiches, fruit, water, a blanket and a bag for rubbish."),
    ("How do I calm down before a test?", "Breathe slowly, remember you prepared, and read each question twice."),
    ("What can I cook with rice and eggs?", "Fried rice is quick: cook the rice, scramble the eggs and mix them."),
    ("How often should I water a cactus?", "About once every two or three weeks, less often in winter."),
    ("How can I remember new words?", "Use them in sentences, review them after a day, and again after a week."),
)


@dataclass(frozen=True)
class Sentence:
    """A user sentence: its text, the template it came from and the reply topic."""

    text: str
    template: int
    slot: str
    topic: str

    @property
    def transcript(self) -> str:
        """ASR target: lower case, punctuation removed (apostrophes kept), as the reference's <TRANSCRIBE>."""
        return normalise_transcript(self.text)


def normalise_transcript(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def _with_opener(opener: str, text: str) -> str:
    return opener + text[0].lower() + text[1:] if opener and not text.startswith("I ") else opener + text


def all_sentences() -> list[Sentence]:
    """Every opener x template x slot sentence, in a fixed order."""
    return [Sentence(_with_opener(opener, template.format(x=slot)), t, slot, topic.format(x=slot))
            for t, (template, slots, topic) in enumerate(TEMPLATES) for slot in slots for opener in OPENERS]


def reply_emotion(emotion: str, event: str) -> str:
    """The cue-appropriate reply emotion (mini names): the event decides if it is telling, else the emotion."""
    return REPLY_FOR_EVENT.get(event, REPLY_FOR_EMOTION[emotion])


def reply_text(sentence: Sentence, age: str, emotion: str, event: str, rng: random.Random) -> tuple[str, str]:
    """(reply emotion tag, reply text) for a sentence said with these cues."""
    tag = reply_emotion(emotion, event)
    topic = sentence.topic.replace("my ", "your ")
    parts = [EVENT_OPENERS.get(event, ""), rng.choice(REPLY_FRAMES[tag]).format(t=topic), AGE_CLOSERS[age]]
    return tag, " ".join(p for p in parts if p)


def think_paragraph(sentence: Sentence, age: str, gender: str, emotion: str, event: str, reply_tag: str,
                    rng: random.Random) -> str:
    """The natural-language think: meaning, age, gender, event and emotion, then the intent."""
    how, reading = _EMOTION_VOICE[emotion]
    person = f"{_AGE_WORDS[age]}, a {_GENDER_WORDS[(age, gender)]}"
    event_part = f" {_EVENT_WORDS[event]}" if event in _EVENT_WORDS else ""
    opener = rng.choice(("The speaker is", "I hear", "This sounds like"))
    return (f"{opener} {person}, saying \"{sentence.text}\" {how}{event_part}. "
            f"From the voice, {reading}, {_INTENT[reply_tag]}.")


def split_sentences(sentences: list[Sentence], unseen_fraction: float, rng: random.Random):
    """(seen, unseen): unseen sentences never reach training; every template keeps seen sentences."""
    seen, unseen = [], []
    for _, group in itertools.groupby(sentences, key=lambda s: s.template):
        group = list(group)
        rng.shuffle(group)
        n_unseen = max(1, round(len(group) * unseen_fraction))
        unseen += group[:n_unseen]
        seen += group[n_unseen:]
    return seen, unseen
