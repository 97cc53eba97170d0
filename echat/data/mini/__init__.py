"""EChat-mini, the corpus of the mini world, built locally: its texts (:mod:`.text`), eSpeak NG speech
(:mod:`.espeak`) shaped into voices with controlled gender, age, emotion and sound events
(:mod:`.voices`), the corpus folder (:mod:`.corpus`) and its statistics (:mod:`.report`,
:mod:`.cue_stats`)."""
