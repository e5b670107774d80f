"""Golden values that a refactor must not change: the training config hash of each shipped stage and group
choice (a resume compares it), the stable hashes behind caches and record uuids (a changed one silently
invalidates users' caches or renames their records), and the per-step loss of a tiny stage-1 run under a
fixed seed.

``python tests/test_golden.py`` prints the current values (the losses with ``repr``, to compare exactly)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from dasd.config import quote_numeric_choices, register_resolvers
from dasd.das.scores import store_key
from dasd.data.cache import cache_key
from dasd.eval.results import item_hash
from dasd.eval.tasks import EvalItem
from dasd.generation.pipeline import question_hash
from dasd.generation.questions import Question
from dasd.mixed.round import build_spec
from dasd.models.student import asset_path
from dasd.training.stages import training_config_hash
from dasd.utils.hashing import model_fingerprint
from dasd.utils.run import config_hash

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
ROOT = "/golden-root"  # paths.root_dir of the composed configs (never created: composing does not touch it)

TRAIN_CHOICES = {
    "stage1": [],
    "stage2": ["stage=2"],
    "mixed": ["stage=mixed"],
    "mixed_policy": ["stage=2", "callbacks=mixed_policy"],
    "divergence": ["stage=1", "sampler=divergence"],
    "eval": ["eval=default"],
    "csv": ["logger=csv"],
    "wandb": ["logger=wandb"],
    "none": ["logger=none"],
}
SETTINGS = {  # a mixed round's settings, as conf/mixed/default.yaml gives them
    "seed": 7, "cap_factor": 1.5, "batch_size": 4, "require_finished": True, "require_correct": False,
    "student": {"engine": "hf", "engine_args": {"dtype": "float32"}, "temperature": 1.0, "top_p": 1.0},
    "teacher": {"model": "teacher-model", "format": "plain", "engine": "hf", "engine_args": {},
                "system_prompt": None, "chat_template_kwargs": {"reasoning_effort": "high"},
                "temperature": 1.0, "top_p": 1.0, "max_tokens": 256},
    "cut": {"snap_to_sentence": True, "min_chars": 16},
}


def train_config(overrides: list[str]) -> dict:
    """The resolved train config, with this checkout's location written as ``<repo>``."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=quote_numeric_choices(
            [*overrides, f"paths.root_dir={ROOT}", f"paths.run_dir={ROOT}/run"]))
    text = json.dumps(OmegaConf.to_container(cfg, resolve=True)).replace(str(REPO), "<repo>")
    return json.loads(text)


def config_hashes() -> dict[str, str]:
    return {name: training_config_hash(train_config(o)) for name, o in TRAIN_CHOICES.items()}


def stable_hashes() -> dict[str, str]:
    tiny = asset_path("tiny_qwen3")
    spec = build_spec(SETTINGS, round_index=1, student_model="student-model", system_prompt=None,
                      end_of_turn="<|im_end|>", filters={"max_tokens": 100}, cutoff_len=512)
    q = Question(id="q1", input="What is 2 + 2 — ünïcode?", domain="math", meta={"b": 1, "a": [1, 2]}, source="f:1")
    item = EvalItem(id="t/q1", question="2 + 2 = ? ünïcode", grader="math", reference="4", meta={})
    return {
        "config_hash": config_hash({"b": 1, "a": {"y": [1, 2], "x": None}, "p": Path("/x")}),
        "cache_key": cache_key(tokenizer="abc", files=["a", "b"], cutoff=512, path=Path("/p")),
        "store_key": store_key(teacher="t", student="s", beta=0.1),
        "spec_hash": spec.hash(),
        "question_hash": question_hash(q),
        "item_hash": item_hash(item),
        "model_fingerprint": model_fingerprint(tiny),
        "model_fingerprint_hub": model_fingerprint("org/name"),
    }


def stage1_losses(root: Path) -> list[float]:
    """The per-step ``train/loss`` of a tiny stage-1 run (debug=fast: 32 samples; seed 42), trained in this process."""
    from dasd.recipes.sft import train

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=quote_numeric_choices(
            ["debug=fast", "logger=none", "seed=42", "trainer.enable_progress_bar=false",
             f"paths.root_dir={root}", f"paths.run_dir={root}/run"]))
    train(cfg)
    rows = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


GOLDEN_CONFIG_HASHES = {  # logger and eval choices leave the hash alone (NON_TRAINING_KEYS)
    "stage1": "14ad787cda694722", "stage2": "12f69a0690d68a02", "mixed": "531dae21e22e75f6",
    "mixed_policy": "d7e1d7a107558e32", "divergence": "e1b9e758d54f2a1a", "eval": "14ad787cda694722",
    "csv": "14ad787cda694722", "wandb": "14ad787cda694722", "none": "14ad787cda694722",
}
GOLDEN_STABLE_HASHES = {
    "config_hash": "bc36d3b47c66b813", "cache_key": "13a06fdd9d321f0c14ef", "store_key": "69aa5af2628afa5a256d",
    "spec_hash": "cc80157d7256f57b", "question_hash": "f59a31eb3ce2b548", "item_hash": "e7b3b8634f203175",
    "model_fingerprint": "dir:b89fabb339b26563", "model_fingerprint_hub": "hub:org/name",
}
# recorded at 8235834 on the 2-core CPU machine (torch 2.13.0+cpu), the same with 1 and 2 threads
GOLDEN_STAGE1_LOSSES = [7.00128698348999, 6.977059364318848, 6.649238109588623, 6.4438252449035645,
                        6.338649749755859, 6.307994842529297]


@pytest.mark.parametrize("name", sorted(TRAIN_CHOICES))
def test_training_config_hash_unchanged(name):
    """A resume compares this hash: a changed one refuses every existing checkpoint of that config."""
    assert training_config_hash(train_config(TRAIN_CHOICES[name])) == GOLDEN_CONFIG_HASHES[name]


def test_stable_hashes_unchanged():
    """Cache keys, score-store keys, round spec hashes (record uuids), question and item hashes."""
    assert stable_hashes() == GOLDEN_STABLE_HASHES


def test_stage1_loss_trajectory_unchanged(tmp_path):
    """The same seed gives the same per-step loss. Exact on the machine that recorded it; 1e-6 relative
    elsewhere (another CPU's kernels may round differently)."""
    losses = stage1_losses(tmp_path)
    assert len(losses) == len(GOLDEN_STAGE1_LOSSES)
    assert losses == pytest.approx(GOLDEN_STAGE1_LOSSES, rel=1e-6)


if __name__ == "__main__":
    import tempfile

    print("GOLDEN_CONFIG_HASHES =", json.dumps(config_hashes(), indent=4))
    print("GOLDEN_STABLE_HASHES =", json.dumps(stable_hashes(), indent=4))
    if "--no-train" not in sys.argv:
        with tempfile.TemporaryDirectory() as d:
            print("GOLDEN_STAGE1_LOSSES =", [repr(x) for x in stage1_losses(Path(d))])
