"""What train.py, generate.py and evaluate.py accept: pydantic schemas of the config keys checked before any
work (``dasd.config_checks`` runs them). Every other key passes (``extra="allow"``): the schemas name the keys
whose bad values used to fail late or obscurely (a number, a range, a choice, an input file, a model).

Validators raise ``ValueError("<problem> (should be ...)")``; the runner prefixes the key and the value.
Numbers are strict: ``optim.lr='1e-4'`` (a string) is refused, as the code would fail on it later.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dasd.generation.registry import ENGINES
from dasd.utils.wandb import WANDB_MODES

# Value sets owned by modules that import torch, transformers or Lightning (seconds to import): restated here so
# a bad config stops before those imports; tests/test_config_checks.py asserts that each equals its owner's.
ON_ERROR = ("raise", "skip")  # dasd.data.records.ON_ERROR
TASKS = ("aime24", "aime25", "gpqa_diamond", "records")  # dasd.eval.tasks.TASKS (loaders)
PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true",
              "bf16-mixed", "32-true", "64-true", "64", "32", "16", "bf16", 64, 32, 16)  # Lightning's inputs
LOGGERS = ("wandb", "csv", "none")  # dasd.training.loggers.build_loggers
LOGPROB_MODES = ("raw", "processed")  # dasd.generation.engine
DAS_RULES = ("teacher_count", "teacher_share", "longest", "min_teacher_count")  # dasd.das.selector.RULES
SOURCE_FORMATS = ("released", "generated")  # dasd.data.datamodule
TEACHER_FORMATS = ("plain", "harmony")
SERVED_ENGINE = "OpenAIEngine"  # an engine whose model is a name on a server, not a directory or hub id


# ---------------------------------------------------------------- value checks (pydantic validators)


def existing_file(value: str) -> str:
    """A path to an existing file (``~`` expanded; relative to the launch directory)."""
    path = Path(value).expanduser()
    if path.is_dir():
        raise ValueError("is a directory (should be an existing file)")
    if not path.is_file():
        raise ValueError("no such file (should be an existing file)")
    return value


def data_path(value: str, info: ValidationInfo) -> str:
    """The training file; not checked for ``stage=mixed``, which trains on the file its revision round writes."""
    return value if (info.context or {}).get("mixed") else existing_file(value)


_MODEL = "should be a local model directory or a Hugging Face hub id, org/name"


def _looks_local(value: str) -> bool:
    """A path, not a hub id: a hub id is ``name`` or ``org/name`` (one slash, no leading ``/ . ~``)."""
    return value.startswith(("/", ".", "~")) or value.count("/") > 1 or "\\" in value or value.endswith("/")


def model_ref(value: str, info: ValidationInfo | None, need: str = "config.json") -> str:
    """A local model directory holding ``need``, or a Hugging Face hub id (``org/name``); with the engine of
    ``info.context["served"]`` (an OpenAI-compatible server) any non-empty name."""
    if info is not None and (info.context or {}).get("served"):
        if not value:
            raise ValueError("should be the name of the model the server serves")
        return value
    path = Path(value).expanduser()
    if path.is_dir():
        if need and not (path / need).is_file():
            raise ValueError(f"a directory without {need} (should be a Hugging Face model directory)")
        return value
    if path.exists():
        raise ValueError(f"is a file ({_MODEL})")
    if _looks_local(value):
        raise ValueError(f"no such directory ({_MODEL})")
    return _hub_id(value, need)


def _hub_id(value: str, need: str) -> str:
    """A well-formed hub id; offline (``HF_HUB_OFFLINE=1``) it must be in the local Hugging Face cache."""
    import huggingface_hub
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        raise ValueError(f"neither a local directory nor a hub id ({_MODEL})") from None
    if huggingface_hub.is_offline_mode() and not isinstance(
            huggingface_hub.try_to_load_from_cache(value, need or "config.json"), str):
        raise ValueError("not a local directory, and not in the local Hugging Face cache (offline mode: "
                         "HF_HUB_OFFLINE is set, so nothing can be downloaded)")
    return value


def tokenizer_ref(value: str, info: ValidationInfo) -> str:
    return model_ref(value, info, need="")


def stage_init(value: str) -> str:
    """``student``, ``auto`` (the parent run's final checkpoint, checked when the stage is planned) or a model."""
    return value if value in ("student", "auto") else model_ref(value, None)


def resume_value(value: str) -> str:
    if value in ("auto", "never"):
        return value
    path = Path(value).expanduser()
    if path.is_dir() and (path / "checkpoint" / "mp_rank_00_model_states.pt").is_file():
        return value  # a DeepSpeed checkpoint: Lightning saves one as a directory
    if not path.is_file():
        raise ValueError(f"{'is not a DeepSpeed checkpoint directory' if path.is_dir() else 'no such file'} "
                         "(should be auto, never or the path of a Lightning checkpoint)")
    return value


def temperature_choice(value: Any) -> Any:
    """generate.py's ``temperature``: low, high or a number >= 0."""
    if value in ("low", "high") or (isinstance(value, int | float) and not isinstance(value, bool)
                                    and math.isfinite(value) and value >= 0):
        return value
    raise ValueError("should be low, high or a number >= 0")


def devices_value(value: Any) -> Any:
    """Lightning's ``devices``: an int >= 1 (-1: all), ``auto``, a list of device indices or ``"0,1"``."""
    if isinstance(value, int) and not isinstance(value, bool) and (value >= 1 or value == -1):
        return value
    if isinstance(value, str) and re.fullmatch(r"auto|-1|\d+|\d+(,\d*)+", value.replace(" ", "")):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                  for v in value):
        return value
    raise ValueError("should be an integer >= 1 (-1: every device), auto, or a list of device indices")


def strategy_name(value: str) -> str:
    if value in ("auto", "ddp") or value.startswith("deepspeed"):
        return value
    raise ValueError("should be auto, ddp, deepspeed_zero3 or deepspeed_zero3_offload")


def _choice(values: tuple) -> Any:
    return Literal[values]  # Literal of a tuple = Literal of its items


# ---------------------------------------------------------------- value types

Int = Annotated[int, Strict()]
PosInt = Annotated[int, Strict(), Field(ge=1)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
Seed = Annotated[int, Strict(), Field(ge=0, le=2**32 - 1)]  # numpy's (and Lightning's) seed range
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
PosNumber = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
NonNegNumber = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
Ratio = Annotated[float, Strict(), Field(ge=0, le=1)]
TopP = Annotated[float, Strict(), Field(gt=0, le=1)]
AdamBeta = Annotated[float, Strict(), Field(ge=0, lt=1)]
Bool = Annotated[bool, Strict()]
Name = Annotated[str, Strict(), Field(min_length=1)]
Text = Annotated[str, Strict()]
File = Annotated[str, Strict(), AfterValidator(existing_file)]
Model = Annotated[str, Strict(), AfterValidator(model_ref)]
Tokenizer = Annotated[str, Strict(), AfterValidator(tokenizer_ref)]
OnError = _choice(ON_ERROR)
LogprobMode = _choice(LOGPROB_MODES)


class Section(BaseModel):
    """Keys not named here are not checked (other code owns them)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


def _check_targets(section: BaseModel) -> BaseModel:
    """Entries beside a group's own keys are objects to build: each needs a ``_target_`` (a dotted path)."""
    for key, value in (section.model_extra or {}).items():
        if isinstance(value, dict) and not isinstance(value.get("_target_"), str):
            raise ValueError(f"{key}: an entry here is built from its _target_ (a dotted class path), "
                             f"which it lacks")
    return section


class Logger(Section):
    """The main logger (``name`` and its W&B settings) and any number of loggers built from ``_target_``."""

    name: _choice(LOGGERS)
    mode: _choice(WANDB_MODES) = "auto"

    _targets = model_validator(mode="after")(_check_targets)


# ---------------------------------------------------------------- train.py


class Optim(Section):
    lr: PosNumber
    min_lr: NonNegNumber  # validated after lr: it may not exceed it
    warmup_ratio: Ratio
    betas: tuple[AdamBeta, AdamBeta]
    eps: NonNegNumber
    weight_decay: NonNegNumber
    max_grad_norm: NonNegNumber | None  # 0 or null: no clipping

    @field_validator("min_lr")
    @classmethod
    def _not_above_lr(cls, value: float, info: ValidationInfo) -> float:
        lr = info.data.get("lr")
        if lr is not None and value > lr:
            raise ValueError(f"should be <= optim.lr ({lr}), where the cosine schedule starts from")
        return value


class Train(Section):
    epochs: PosInt
    micro_batch_size: PosInt
    accumulate: PosInt
    save_every_n_steps: NonNegInt | None  # 0 or null: at epoch ends only
    keep_hf_checkpoints: PosInt | None  # null: keep all
    nonfinite: Literal["stop", "skip"] = "stop"  # dasd.training.nonfinite.MODES
    max_skipped_steps: NonNegInt = 10
    plot_every_n_steps: NonNegInt | None = None
    progress_refresh_rate: NonNegInt = 1


class Stage(Section):
    id: PosInt
    epochs: PosInt
    temperature: NonNegNumber
    init_from: Annotated[str, Strict(), AfterValidator(stage_init)]
    mixed: Bool = False


class Data(Section):
    path: Annotated[str, Strict(), AfterValidator(data_path)]
    cutoff_len: PosInt
    on_error: OnError
    format: _choice(SOURCE_FORMATS)
    logprobs: File | None = None
    max_samples: PosInt | None = None
    system_prompt: Text | None = None
    teacher_tokenizer: Tokenizer | None = None
    teacher_format: _choice(TEACHER_FORMATS) = "plain"
    num_workers: NonNegInt = 0
    num_proc: PosInt = 1
    cache: Bool = True
    supervise_eot_newline: Bool = True
    temperature_check: Literal["warn", "error", "off"] = "warn"  # dasd.data.datamodule.TEMPERATURE_CHECKS


class StudentLoad(Section):
    init: Literal["pretrained", "random"] = "pretrained"
    gradient_checkpointing: Bool = False
    liger: Bool = False
    trust_remote_code: Bool = False


class Student(Section):
    name_or_path: Model
    load: StudentLoad = StudentLoad()


class Trainer(Section):
    precision: _choice(PRECISIONS)
    devices: Annotated[Any, AfterValidator(devices_value)]
    num_nodes: PosInt = 1
    enable_progress_bar: Bool = True


class Strategy(Section):
    name: Annotated[str, Strict(), AfterValidator(strategy_name)]
    timeout_minutes: PosNumber | None = None


class Sampler(Section):
    name: Name
    seed: Seed | None = None
    beta: Number | None = None
    rule: _choice(DAS_RULES) | None = None
    batch_size: PosInt | None = None


class MixedStudent(Section):
    engine: _choice(ENGINES)
    temperature: NonNegNumber
    top_p: TopP


class MixedTeacher(MixedStudent):
    format: _choice(TEACHER_FORMATS)
    max_tokens: PosInt


class Mixed(Section):
    n_questions: NonNegInt | None  # 0 (stage=mixed): no round, the off-policy samples alone (a control)
    extra_offpolicy: NonNegInt
    cap_factor: PosNumber
    mask_student_prefix: Bool
    require_finished: Bool = True
    require_correct: Bool = False
    transport: Literal["subprocess", "inprocess"] = "subprocess"
    batch_size: PosInt = 64
    student: MixedStudent
    teacher: MixedTeacher


class MixedPolicy(Section):
    every_n_epochs: PosInt = 1


class Callbacks(Section):
    """Callbacks built from ``_target_`` (``mixed_policy``, ``lr_monitor``, a user's own)."""

    mixed_policy: MixedPolicy | None = None

    _targets = model_validator(mode="after")(_check_targets)


class EvalAtEnd(Section):
    k: PosInt | None = None
    task: Name | None = None


class TrainConfig(Section):
    seed: Seed
    resume: Annotated[str, Strict(), AfterValidator(resume_value)]
    data_only: Bool = False
    experiment_name: Name
    tags: list[Text] = []
    stage: Stage
    train: Train
    optim: Optim
    data: Data
    student: Student
    trainer: Trainer
    strategy: Strategy
    logger: Logger
    sampler: Sampler
    mixed: Mixed | None = None
    callbacks: Callbacks | None = None
    eval: EvalAtEnd | None = None


# ---------------------------------------------------------------- generate.py and evaluate.py


class Shard(Section):
    count: PosInt  # before index: index is checked against it
    index: NonNegInt

    @field_validator("index")
    @classmethod
    def _below_count(cls, value: int, info: ValidationInfo) -> int:
        count = info.data.get("count")
        if count is not None and value >= count:
            raise ValueError(f"should be < shard.count ({count})")
        return value


class Sampling(Section):
    temperature: NonNegNumber
    top_p: TopP
    max_tokens: PosInt
    logprob_mode: LogprobMode = "raw"
    top_k: NonNegInt = 0  # 0: off
    min_p: Ratio = 0.0
    repetition_penalty: PosNumber = 1.0


class GenerateSampling(Sampling):
    stop: list[Text] = []


class Teacher(Section):
    name: Name
    name_or_path: Model  # with engine=openai: the name the server serves
    format: _choice(TEACHER_FORMATS)
    system_prompt: Text | None = None


class GenerateConfig(Section):
    questions: File
    on_error: OnError
    max_questions: PosInt | None = None
    samples_per_question: PosInt
    temperature: Annotated[Any, AfterValidator(temperature_choice)]
    seed: Seed
    batch_size: PosInt
    progress: Bool = True
    shard: Shard
    sampling: GenerateSampling
    teacher: Teacher
    logger: Logger


class Task(Section):
    name: Name
    loader: _choice(TASKS)
    path: File
    limit: PosInt | None = None
    seed: Int = 0
    on_error: OnError = "raise"
    k: PosInt
    max_tokens: PosInt


class EvaluateConfig(Section):
    model: Model  # with engine=openai: the name the server serves
    k: PosInt
    seed: Seed
    system_prompt: Text | None = None
    batch_size: PosInt
    save_responses: Bool = False
    resume: Bool = True
    overwrite: Bool = False
    bootstrap: PosInt = 10000
    task: Task
    sampling: Sampling
    logger: Logger


class ProvenanceModel(Section):
    path: Name  # a model directory or hub id; with engine=openai, the name the server serves
    format: _choice(TEACHER_FORMATS) = "plain"
    engine: _choice(ENGINES) = "hf"
    system_prompt: Text | None = None

    @model_validator(mode="after")
    def _local_model(self) -> ProvenanceModel:
        if self.engine != "openai":
            try:
                model_ref(self.path, None)
            except ValueError as e:
                raise ValueError(f"path {self.path!r}: {e}") from None
        return self


class ProvenanceResponses(Section):
    eval_dir: Text | None = None
    k: PosInt
    engine: Name
    batch_size: PosInt


class ProvenanceConfig(Section):
    models: dict[Literal["teacher", "student", "distilled"], ProvenanceModel]
    responses: ProvenanceResponses
    task: Task
    system_prompt: Text | None = None
    label: Text | None = None
    alpha: NonNegNumber
    beta: NonNegNumber
    bins: PosInt
    bootstrap: PosInt
    min_chars: PosInt
    batch_size: PosInt
    num_examples: NonNegInt
    on_empty: OnError = "raise"
    seed: Seed
    logger: Logger
