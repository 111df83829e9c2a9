"""The configs shipped in configs/ resolve (a typo there would only surface on a user's GPU)."""

from pathlib import Path

import pytest
import yaml

from adpo.trainer.config import RunConfig
from adpo.utils.config import load_yaml

ROOT = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["organism.yaml", "llava-1.5-7b.yaml", "qwen2-vl-7b.yaml"])
def test_training_configs_resolve(name):
    raw = load_yaml(ROOT / name) | {"method": "adpo", "model": "m", "data": "d", "out": "o", "reference": "r"}
    run = RunConfig.from_dict(raw)
    assert run.train.beta == 0.1


@pytest.mark.parametrize("name", ["llava-1.5-7b.yaml", "qwen2-vl-7b.yaml"])
def test_7b_recipes_are_the_official_one(name):
    """method.md §3: LoRA r128/α256 on all decoder linears, lr 2e-5 cosine, warm-up 0.1, β 0.1, AT α 30, image
    PGD L∞ 0.2 / 0.0125 / 30 steps without random start, the lowest-loss iterate kept; bf16 with checkpointing."""
    raw = load_yaml(ROOT / name) | {"method": "at", "model": "m", "data": "d", "out": "o", "utility_data": "u"}
    run = RunConfig.from_dict(raw)
    t, lora, img = run.train, run.lora, run.image
    assert (lora.r, lora.alpha, lora.dropout, lora.target) == (128, 256, 0.0, "auto")
    assert (t.lr, t.scheduler, t.warmup_ratio, t.beta, t.loss_type, run.utility_weight) == \
        (2e-5, "cosine", 0.1, 0.1, "sigmoid", 30.0)
    assert (img.eps, img.step_size, img.steps, img.random_start, img.keep_best, img.norm) == \
        (0.2, 0.0125, 30, False, True, "linf")
    assert t.model_dtype == "bfloat16" and t.gradient_checkpointing and t.logps_chunk


@pytest.mark.parametrize("path", sorted((ROOT / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_load_in_accelerate(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.distributed_type.name in ("NO", "MULTI_GPU", "FSDP", "DEEPSPEED")
    assert yaml.safe_load(path.read_text())["distributed_type"] == cfg.distributed_type.value


def test_chunked_logps_are_refused_or_off_under_sharded_engines(tiny_model):
    from types import SimpleNamespace

    from adpo.trainer.loop import logps_chunk
    from adpo.utils.config import ConfigError

    def run(chunk):
        return RunConfig.from_dict({"method": "dpo", "model": "m", "data": "d", "out": "o",
                                    "train": {"logps_chunk": chunk}})

    fsdp = SimpleNamespace(distributed_type=SimpleNamespace(name="FSDP"), state=SimpleNamespace(deepspeed_plugin=None))
    ddp = SimpleNamespace(distributed_type=SimpleNamespace(name="MULTI_GPU"),
                          state=SimpleNamespace(deepspeed_plugin=None))
    tiny_model.resize_token_embeddings(40_000)  # a large vocabulary: auto chunks
    assert logps_chunk(run(64), ddp, tiny_model) == 64 and logps_chunk(run(None), ddp, tiny_model) > 0
    assert logps_chunk(run(None), fsdp, tiny_model) == 0
    with pytest.raises(ConfigError, match="FSDP shards"):
        logps_chunk(run(64), fsdp, tiny_model)


@pytest.mark.parametrize(("value", "expected"), [("16/255", 16 / 255), (0.0627, 0.0627), ("inf", float("inf"))])
def test_one_budget_vocabulary_in_training(value, expected):
    """``16/255``, ``0.0627`` and ``inf`` mean the same in train as in eval (adpo.threats.budget)."""
    from adpo.eval.config import EvalConfig

    raw = {"method": "at-dpo", "model": "m", "data": "d", "out": "o", "image": {"eps": value, "step_size": "1/255"}}
    run = RunConfig.from_dict(raw)
    assert run.image.eps == expected and run.image.step_size == 1 / 255
    assert EvalConfig.from_dict({"pgd_image": {"eps": [value]}}).pgd_image.eps == (value,)


def test_bad_budget_is_a_config_error():
    from adpo.utils.config import ConfigError

    with pytest.raises(ConfigError, match="cannot read budget '16/x'"):
        RunConfig.from_dict({"method": "dpo", "model": "m", "data": "d", "out": "o", "image": {"eps": "16/x"}})


@pytest.mark.parametrize("name", ["zero2.yaml", "zero3.yaml"])
def test_deepspeed_configs_and_the_loop_agree(name, tiny_model):
    """What DeepSpeed takes from its config rather than from `train`: the loop must set it (micro-batch and
    clipping norm), ZeRO-3 must be able to write the final weights whole, and chunked log-probs are off there."""
    from types import SimpleNamespace

    from adpo.trainer.loop import configure_deepspeed

    ds = dict(yaml.safe_load((ROOT / "accelerate" / name).read_text())["deepspeed_config"])
    run = RunConfig.from_dict({"method": "dpo", "model": "m", "data": "d", "out": "o",
                               "train": {"batch_size": 3, "max_grad_norm": 0.7}})
    configure_deepspeed(ds, run.train)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_clipping"] == 0.7
    assert ds.get("offload_optimizer_device", "none") == "none"  # the attack's input gradients stay on the GPU
    if ds["zero_stage"] == 3:  # loop._run gathers the sharded weights with accelerator.get_state_dict
        assert ds["zero3_save_16bit_model"] is True
        from adpo.trainer.loop import logps_chunk

        z3 = SimpleNamespace(distributed_type=SimpleNamespace(name="DEEPSPEED"),
                             state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)))
        tiny_model.resize_token_embeddings(40_000)  # a large vocabulary: auto would chunk
        assert logps_chunk(RunConfig.from_dict({"method": "dpo", "model": "m", "data": "d", "out": "o"}), z3,
                           tiny_model) == 0
