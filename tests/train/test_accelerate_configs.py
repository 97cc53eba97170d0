"""configs/accelerate/*.yaml are what ``accelerate launch --config_file`` takes: each goes through accelerate's own
launch command up to the launcher (replaced here, so nothing starts and DeepSpeed need not be installed), and the
environment that launcher would give ``echat train`` says DDP, FSDP over Qwen2 decoder layers, or ZeRO-2 with the
reference's gradient clipping and the recipe's own gradient accumulation."""

from pathlib import Path

import accelerate.commands.launch as launch
import pytest
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from echat.config import preset
from echat.models.echat import EChat

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
TRAIN = ["-m", "echat", "train", "--stage", "empathy", "--preset", "osum-echat", "--init", "tag_think_final.pt"]


def launched(name: str, monkeypatch) -> tuple[str, dict]:
    """(launcher accelerate picks, the environment it would start ``echat train`` with) for one config file."""
    seen = {}
    for launcher in ("deepspeed_launcher", "multi_gpu_launcher", "simple_launcher"):
        monkeypatch.setattr(launch, launcher, lambda args, launcher=launcher: seen.update(launcher=launcher, args=args))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    args = launch.launch_command_parser().parse_args(["--config_file", str(CONFIGS / f"{name}.yaml"), *TRAIN])
    launch.launch_command(args)
    args = seen["args"]
    assert args.module and [args.training_script, *args.training_script_args] == TRAIN[1:]
    env = prepare_deepspeed_cmd_env(args)[1] if args.use_deepspeed else prepare_multi_gpu_env(args)
    return seen["launcher"], env


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
