"""Every shipped config composes; bad configurations fail early and clearly; the paper preset is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from dasd.config import quote_numeric_choices, register_resolvers
from dasd.training.optim import OptimConfig, build_optimizer
from dasd.training.strategy import build_strategy, zero3_config

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
GENERATE_ONLY = ("teacher", "engine")  # groups of conf/generate.yaml; every other group belongs to train.yaml
EVALUATE_ONLY = ("task",)  # groups of conf/evaluate.yaml only
ABLATE_ONLY = ("world",)  # groups of conf/ablate.yaml and conf/build_world.yaml only
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]


def compose_cfg(overrides: list[str], tmp_path: Path, hydra_cfg: bool = False, name: str = "train"):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=quote_numeric_choices(
            overrides + [f"paths.root_dir={tmp_path}", f"paths.run_dir={tmp_path}/run"]),
            return_hydra_config=hydra_cfg)


def test_every_group_has_options():
    """The config groups the README documents all exist and are non-empty."""
    for group in ("stage", "sampler", "student", "data", "trainer", "strategy", "logger", "paths", "hydra",
                  "debug", "experiment", "sweep", "optim", "teacher", "engine", "mixed", "callbacks"):
        assert group in GROUPS and any((CONF / group).glob("*.yaml")), group


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_resolves(group, option, tmp_path):
    """Each option of each group composes with the defaults and every interpolation resolves."""
    if group in GENERATE_ONLY:
        plain = OmegaConf.to_container(compose_cfg([f"{group}={option}"], tmp_path, name="generate"), resolve=True)
        assert plain["teacher"]["name_or_path"] and plain["engine"]["_target_"].startswith("dasd.generation.")
        assert plain["sampling"]["temperature"] == 0.6
        return
    if group in EVALUATE_ONLY:
        plain = OmegaConf.to_container(compose_cfg([f"{group}={option}"], tmp_path, name="evaluate"), resolve=True)
        assert plain["task"]["max_tokens"] == plain["sampling"]["max_tokens"] and plain["k"] >= 1
        return
    if group in ABLATE_ONLY:
        for name in ("ablate", "build_world"):
            plain = OmegaConf.to_container(compose_cfg([f"{group}={option}"], tmp_path, name=name), resolve=True)
            assert plain["world"]["teacher"]["architecture"] and plain["world"]["data"]["n_heldout"] >= 1
        return
    cfg = compose_cfg([f"{group}={option}"], tmp_path, hydra_cfg=(group == "hydra"))
    if group == "hydra":
        assert "run" in cfg.hydra
        return
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert plain["stage"]["id"] in (1, 2, 3) and plain["data"]["path"] and plain["student"]["name_or_path"]


@pytest.mark.parametrize("value,expected", [("low", 0.6), ("high", 1.0), ("0.8", 0.8), (0.7, 0.7)])
def test_generate_temperature_schedule(value, expected, tmp_path):
    """`temperature=low|high|<number>` sets the sampling temperature (0.6 / 1.0 / the number)."""
    cfg = compose_cfg([f"temperature={value}"], tmp_path, name="generate")
    assert cfg.sampling.temperature == expected and str(expected) in cfg.run_name


def test_numeric_stage_override(tmp_path):
    """`stage=2` (a bare number on the command line) selects conf/stage/2.yaml."""
    assert quote_numeric_choices(["stage=2", "stage=1,2", "train.epochs=2", "+stage=1"]) == \
        ["stage='2'", "stage='1','2'", "train.epochs=2", "+stage='1'"]
    cfg = compose_cfg(["stage=2"], tmp_path)
    assert cfg.stage.id == 2 and cfg.stage.temperature == 1.0 and cfg.stage.init_from == "auto"
    assert cfg.data.path.endswith("pool_T1.0.jsonl")


@pytest.mark.parametrize("name", ["deepspeed_zero3", "deepspeed_zero3_offload"])
def test_deepspeed_without_cuda_fails_at_once(name):
    """On a machine without CUDA the DeepSpeed strategies stop with a message naming the fix."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="needs CUDA.*strategy=auto or strategy=ddp"):
        build_strategy(name, hidden_size=128)


def test_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match="unknown strategy"):
        build_strategy("fsdp9")


# The authors' stage1.yaml / stage2.yaml / ds_z3_config.json values (spec §6.2).
PAPER = {
    "lr": 5.0e-5, "min_lr": 1.0e-5, "warmup_ratio": 0.1, "betas": [0.9, 0.95], "eps": 1.0e-8,
    "weight_decay": 0.1, "max_grad_norm": 1.0, "epochs": 6, "micro_batch_size": 1, "accumulate": 4,
    "global_batch": 64, "cutoff_len": 65536, "precision": "bf16-mixed", "seed": 42,
    "system_prompt": "You are a helpful assistant.", "student": "Qwen/Qwen3-4B-Thinking-2507",
    # attn auto: flash_attention_2 (the authors' FA2) wherever flash-attn is installed
    "attn": "auto", "liger": True, "gradient_checkpointing": True,
    "zero": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 1e9,
             "stage3_max_live_parameters": 1e9, "stage3_max_reuse_distance": 1e9,
             "stage3_gather_16bit_weights_on_model_save": True},
}


@pytest.mark.parametrize("stage", [1, 2])
def test_paper_preset_reproduces_authors_config(stage, tmp_path):
    """experiment=paper_stage<N> sets every value of the authors' training configs."""
    cfg = compose_cfg([f"experiment=paper_stage{stage}"], tmp_path)
    o, t = cfg.optim, cfg.train
    assert (o.lr, o.min_lr, o.warmup_ratio, list(o.betas), o.eps, o.weight_decay, o.max_grad_norm) == (
        PAPER["lr"], PAPER["min_lr"], PAPER["warmup_ratio"], PAPER["betas"], PAPER["eps"],
        PAPER["weight_decay"], PAPER["max_grad_norm"])
    assert (t.epochs, t.micro_batch_size, t.accumulate) == (PAPER["epochs"], PAPER["micro_batch_size"],
                                                            PAPER["accumulate"])
    assert t.micro_batch_size * t.accumulate * cfg.trainer.devices * cfg.trainer.num_nodes == PAPER["global_batch"]
    assert cfg.data.cutoff_len == PAPER["cutoff_len"] and cfg.data.system_prompt == PAPER["system_prompt"]
    assert cfg.trainer.precision == PAPER["precision"] and cfg.seed == PAPER["seed"]
    assert cfg.student.name_or_path == PAPER["student"]
    load = cfg.student.load
    assert (load.attn_implementation, load.liger, load.gradient_checkpointing) == (
        PAPER["attn"], PAPER["liger"], PAPER["gradient_checkpointing"])
    assert cfg.strategy.name == "deepspeed_zero3" and cfg.stage.id == stage
    assert cfg.stage.temperature == (0.6 if stage == 1 else 1.0)
    assert cfg.stage.init_from == ("student" if stage == 1 else "auto")
    assert Path(cfg.data.path).name == f"Superior-Reasoning-SFT-gpt-oss-120b-stage{stage}-train-data.jsonl"
    zero = zero3_config(hidden_size=2560)["zero_optimization"]
    assert {k: zero[k] for k in PAPER["zero"]} == PAPER["zero"] and "offload_param" not in zero


def test_zero3_config_is_the_authors_ds_z3_config():
    """strategy=deepspeed_zero3 hands DeepSpeed exactly the authors' ds_z3_config.json, with its "auto" values
    resolved as the HF Trainer resolves them (batch size, accumulation and clipping come from Lightning)."""
    hidden = 2560
    assert zero3_config(hidden) == {
        "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False, "bf16": {"enabled": True},
        "zero_optimization": {
            **PAPER["zero"], "reduce_bucket_size": hidden * hidden,
            "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
            "stage3_param_persistence_threshold": 10 * hidden}}


@pytest.mark.parametrize("offload,targets", [(False, []), ("optimizer", ["offload_optimizer"]),
                                             ("all", ["offload_optimizer", "offload_param"]),
                                             (True, ["offload_optimizer", "offload_param"])])
def test_zero3_offload_modes(offload, targets):
    """strategy.offload: false (the authors'), optimizer (ZeRO-Offload: states and step on the host), all."""
    from types import SimpleNamespace

    from dasd.training.strategy import optimizer_offloaded

    config = zero3_config(1024, offload=offload)
    assert sorted(k for k in config["zero_optimization"] if k.startswith("offload_")) == targets
    assert optimizer_offloaded(SimpleNamespace(config=config)) == bool(targets)
    assert not optimizer_offloaded("auto")
    with pytest.raises(ValueError, match="strategy.offload='params'"):
        zero3_config(1024, offload="params")


def test_paper_stage3_preset(tmp_path):
    """experiment=paper_stage3: mixed-policy stage from stage 2, 50K questions at 1.5x, 20K off-policy, 1 epoch."""
    cfg = compose_cfg(["experiment=paper_stage3"], tmp_path)
    m = cfg.mixed
    assert cfg.stage.mixed and cfg.stage.init_from == "auto" and cfg.stage.parent_run == "stage2"
    assert (m.n_questions, m.extra_offpolicy, m.cap_factor, m.mask_student_prefix) == (50000, 20000, 1.5, False)
    assert (m.student.temperature, m.student.top_p, m.teacher.temperature) == (1.0, 1.0, 1.0)
    assert list(m.question_runs) == ["stage1", "stage2"] and cfg.train.epochs == 1
    assert m.teacher.model == "openai/gpt-oss-120b" and m.teacher.format == "harmony"
    assert dict(m.teacher.chat_template_kwargs) == {"reasoning_effort": "high"}
    assert cfg.optim.lr == PAPER["lr"] and cfg.optim.min_lr == PAPER["min_lr"]


def test_paper_optimizer_and_schedule_values(tiny_path):
    """The paper optim preset builds AdamW(0.9, 0.95, 1e-8, wd 0.1 with norms/biases exempt) and
    warmup to 5e-5 over ceil(0.1 N) steps, then cosine to 1e-5."""
    register_resolvers()
    paper = OmegaConf.load(CONF / "optim" / "paper.yaml")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_path))
    opt, sched = build_optimizer(model, OptimConfig(**OmegaConf.to_container(paper)), total_steps=100)
    decay, exempt = opt.param_groups
    assert decay["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in exempt["params"])
    assert decay["betas"] == (0.9, 0.95) and decay["eps"] == 1e-8
    lrs = []
    for _ in range(101):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # W = ceil(0.1 * 100) = 10; lr(t) = 5e-5 t / W, then 1e-5 + 4e-5 * 0.5 * (1 + cos(pi (t - W) / (N - W)))
    expected = {0: 0.0, 5: 2.5e-5, 10: 5e-5, 55: 3e-5, 100: 1e-5}
    for step, lr in expected.items():
        assert lrs[step] == pytest.approx(lr, rel=1e-6, abs=1e-12), step
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # monotone decay after warmup


def test_training_hash_ignores_only_non_training_keys(tmp_path):
    """A resume may change logging, saving and progress-bar settings, but not lr, epochs or data."""
    from dasd.training.stages import training_config_hash

    def h(*overrides: str) -> str:
        return training_config_hash(OmegaConf.to_container(compose_cfg(list(overrides), tmp_path), resolve=True))

    base = h()
    assert h("logger=csv", "train.save_every_n_steps=7", "trainer.enable_progress_bar=false", "resume=never") == base
    for changed in ("optim.lr=0.1", "train.epochs=9", "data.cutoff_len=512", "seed=1", "stage=2"):
        assert h(changed) != base, changed


def test_kernel_choices_and_default_init_leave_the_training_hash_alone(tmp_path):
    """The attention implementation (each isolates samples) and `init: pretrained` (the default, absent from
    older configs) do not change what a run trains, so a run started before these keys existed resumes;
    `init: random` does change it, and is refused for a stage that starts from a checkpoint."""
    from dasd.recipes.stage import stage_settings
    from dasd.training.stages import resolve_init, training_config_hash

    def h(*overrides):
        return training_config_hash(OmegaConf.to_container(compose_cfg(list(overrides), tmp_path), resolve=True))

    base = h("student=qwen3_4b_instruct_2507")
    assert h("student=qwen3_4b_instruct_2507", "student.load.attn_implementation=sdpa") == base
    assert h("student=qwen3_4b_instruct_2507", "~student.load.init") == base
    assert h("student=qwen3_4b_instruct_2507", "student.load.init=random") != base
    with pytest.raises(ValueError, match="init=random would discard the weights stage 2 starts from"):
        resolve_init(stage_settings(compose_cfg(["stage=2", "+student.load.init=random"], tmp_path)))
