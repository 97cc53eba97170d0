"""The figures of an evaluation report: ``eval.json`` and its confusion-matrix plots, and the text table
that ``echat eval``, the notebooks and ``make demo``'s report print (one row per score, one column per
test subset)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from echat.eval.metrics import plot_confusion
from echat.tokens import LABEL_SETS


def confusion_tables(report: dict) -> list[tuple[str, str, dict]]:
    """(subset, name, {labels, confusion}) of every confusion matrix in a report."""
    tables = []
    for subset, stages in report["subsets"].items():
        for field, scores in stages.get("understanding", {}).get("labels", {}).items():
            tables.append((subset, field, scores))
        if "reply_emotion" in stages.get("empathy", {}):
            tables.append((subset, "reply_emotion", stages["empathy"]["reply_emotion"]))
    return tables


def save_report(report: dict, out_dir: str | Path) -> list[Path]:
    """Write ``eval.json`` and one ``confusion_{subset}_{name}.png`` per confusion matrix to ``out_dir``
    (created); returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "eval.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    written = [path]
    for subset, name, scores in confusion_tables(report):
        png = out / f"confusion_{subset}_{name}.png"
        title = f"{name}, {subset}: accuracy {scores['accuracy']:.2f}"
        plot_confusion(scores["confusion"], scores["labels"], title, png)
        written.append(png)
    return written


_ROWS = (
    ("understanding: clips", "understanding", ("items",)),
    ("  ASR CER", "understanding", ("asr", "cer")),
    ("  ASR WER", "understanding", ("asr", "wer")),
    *((f"  {field} accuracy", "understanding", ("labels", field, "accuracy")) for field in LABEL_SETS),
    ("generation: TTS utterances", "generation", ("items",)),
    ("  WER model speech", "generation", ("wer_model",)),
    ("  WER ground truth re-synthesised", "generation", ("wer_ground_truth",)),
    ("  WER ratio model / ground truth", "generation", ("wer_ratio",)),
    ("  within 2x of ground truth", "generation", ("within_2x",)),
    ("empathy: dialogues", "empathy", ("items",)),
    ("  think parse rate", "empathy", ("think_parse_rate",)),
    *((f"  think {field} accuracy", "empathy", ("think_field_accuracy", field))
      for field in ("transcript", "age", "gender", "emotion", "event", "reply_emotion")),
    ("  reply-emotion accuracy", "empathy", ("reply_emotion_accuracy",)),
    ("  reply emotions from a tag", "empathy", ("reply_emotion_sources", "tag")),
    ("  reply emotions from the classifier", "empathy", ("reply_emotion_sources", "classifier")),
    ("  reply emotions missing", "empathy", ("reply_emotion_sources", "none")),
    ("  classifier on ground-truth replies", "empathy", ("classifier_accuracy_ground_truth",)),
)


def dig(data: Any, keys: Sequence[str]) -> Any:
    """``data[k1][k2]...`` for ``keys``, or None where a level is missing."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def format_cell(value: Any, digits: int = 3) -> str:
    """A table cell: ``-`` for None, yes/no for booleans, floats to ``digits`` decimals."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render(report: dict) -> str:
    """A readable text summary of a report: settings, then one table row per score, one column per subset."""
    subsets = report["subsets"]
    lines = [f"EChat evaluation: model {report['model']}, corpus {report['corpus']} ({report['split']}), "
             f"think {report['think']}, limit {report['limit']}, {report.get('seconds', '-')} s"]
    if report.get("checkpoint"):
        lines.append(f"checkpoint: {report['checkpoint']}")
    info = report.get("reply_emotion_classifier")
    if info and info.get("skipped"):
        lines.append(info["skipped"])
    elif info:
        lines.append(f"reply-emotion classifier ({info['kind']}, {info['train_replies']} training replies): "
                     f"accuracy {format_cell(info['test_accuracy'])} on {info['test_replies']} ground-truth "
                     f"{report['split']} replies")
    lines += ["", f"{'':38}" + "".join(f"{name:>10}" for name in subsets)]
    for label, stage, keys in _ROWS:
        if stage in report["stages"]:
            values = [dig(subsets[name].get(stage), keys) for name in subsets]
            if stage != "generation" and all(v is None for v in values) and len(keys) > 1:
                continue
            lines.append(f"{label:38}" + "".join(f"{format_cell(v):>10}" for v in values))
    for name in subsets:
        for stage in report["stages"]:
            reason = dig(subsets[name].get(stage), ("skipped",))
            if reason:
                lines.append(f"{stage} skipped ({name}): {reason}")
    return "\n".join(lines)
