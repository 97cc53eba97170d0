"""configs/accelerate/*.yaml are what ``accelerate launch --config_file`` takes: each goes through accelerate's own
launch command up to the launcher (replaced here, so nothing starts and DeepSpeed need not be installed), and the
environment that launcher would give ``echat train`` says DDP, FSDP over Qwen2 decoder layers, or ZeRO-2 with the
reference's gradient clipping and the recipe's own gradient accumulation. README's fine-tuning commands go the
same way, and their ``echat`` arguments through ``echat``'s parser."""

import re
import shlex
from pathlib import Path

import accelerate.commands.launch as launch
import pytest
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from echat.cli import build_parser, cmd_download, cmd_train
from echat.config import preset
from echat.models.echat import EChat

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "accelerate"
TRAIN = ["-m", "echat", "train", "--stage", "empathy", "--preset", "osum-echat", "--init", "tag_think_final.pt"]


def launch_args(argv: list[str], monkeypatch):
    """(launcher accelerate picks, the arguments it would get) for ``accelerate launch ARGV``; nothing starts."""
    seen = {}
    for launcher in ("deepspeed_launcher", "multi_gpu_launcher", "simple_launcher"):
        monkeypatch.setattr(launch, launcher, lambda args, launcher=launcher: seen.update(launcher=launcher, args=args))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    launch.launch_command(launch.launch_command_parser().parse_args(argv))
    return seen["launcher"], seen["args"]


def launched(name: str, monkeypatch) -> tuple[str, dict]:
    """(launcher, the environment it would start ``echat train`` with) for one config file."""
    launcher, args = launch_args(["--config_file", str(CONFIGS / f"{name}.yaml"), *TRAIN], monkeypatch)
    assert args.module and [args.training_script, *args.training_script_args] == TRAIN[1:]
    env = prepare_deepspeed_cmd_env(args)[1] if args.use_deepspeed else prepare_multi_gpu_env(args)
    return launcher, env


def readme_fine_tuning() -> list[list[str]]:
    """The command lines of README's fine-tuning block, as words (continuations joined, comments dropped)."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Fine-tuning the released checkpoints\n")[1]
    block = re.search(r"^```sh\n(.*?)^```", section.split("\n## ")[0], re.M | re.S).group(1)
    return [words for line in block.replace("\\\n", " ").splitlines() if (words := shlex.split(line, comments=True))]


def test_the_three_configs_are_shipped():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == ["ddp.yaml", "fsdp.yaml", "zero2.yaml"]


@pytest.mark.parametrize("name", ["ddp", "fsdp", "zero2"])
def test_every_config_trains_in_bf16_on_one_machine(name, monkeypatch):
    _, env = launched(name, monkeypatch)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_ddp_is_plain_data_parallel(monkeypatch):
    launcher, env = launched("ddp", monkeypatch)
    assert launcher == "multi_gpu_launcher" and "ACCELERATE_USE_FSDP" not in env


def test_fsdp_shards_the_decoder_layers_of_the_echat_llm(monkeypatch):
    launcher, env = launched("fsdp", monkeypatch)
    assert launcher == "multi_gpu_launcher" and env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    layer = EChat.from_preset("smoke").causal_lm.model.layers[0]
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == type(layer).__name__


def test_zero2_keeps_the_recipes_accumulation_and_the_reference_clipping(monkeypatch):
    launcher, env = launched("zero2", monkeypatch)
    assert launcher == "deepspeed_launcher" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    assert float(env["ACCELERATE_GRADIENT_CLIPPING"]) == preset("osum-echat").train.grad_clip
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env  # set, it would override config.train.accum_steps


def test_readmes_fine_tuning_commands_launch_and_parse(monkeypatch):
    lines = readme_fine_tuning()
    stages = []
    for words in lines:
        if words[0] == "echat":
            assert build_parser().parse_args(words[1:]).func is cmd_download, words
        elif words[:2] == ["accelerate", "launch"]:
            argv = [str(ROOT / w) if w.startswith("configs/") else w for w in words[2:]]
            _, args = launch_args(argv, monkeypatch)
            assert args.module and args.training_script == "echat", words
            parsed = build_parser().parse_args(args.training_script_args)
            assert parsed.func is cmd_train and parsed.preset == "osum-echat" and parsed.init, words
            stages.append(parsed.stage)
        else:
            assert words[0].startswith("CKPT="), words
    assert stages == ["understanding", "generation", "empathy"]
