"""The stage's data module from the config (shared by the SFT stage and ``stage=mixed``'s round 0, which
rebuilds its parent runs' selections from their configs)."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dasd.data.datamodule import SFTDataModule, TemperatureCheck
from dasd.data.filters import FilterConfig


def datamodule(cfg: DictConfig, tokenizer) -> SFTDataModule:
    d = cfg.data
    return SFTDataModule(path=d.path, tokenizer=tokenizer, selector=instantiate(cfg.sampler),
                         cutoff_len=d.cutoff_len, micro_batch_size=cfg.train.micro_batch_size,
                         accumulate=cfg.train.accumulate, system_prompt=d.system_prompt,
                         end_of_turn=d.end_of_turn, on_error=d.on_error, seed=cfg.seed,
                         max_samples=d.max_samples, num_workers=d.num_workers,
                         cache_dir=cfg.paths.cache_dir if d.cache else None, num_proc=d.num_proc,
                         filters=FilterConfig.from_dict(OmegaConf.to_container(cfg.filters, resolve=True))
                         if cfg.filters.order and not d.get("prefiltered") else None,  # stage=mixed: filtered
                         source_format=d.format, logprobs_path=d.get("logprobs"),
                         mask_student_prefix=bool(cfg.get("mixed", {}).get("mask_student_prefix", False)),
                         supervise_eot_newline=d.get("supervise_eot_newline", True),
                         temperature_check=None if cfg.stage.get("mixed") else TemperatureCheck(  # mixed: T varies
                             float(cfg.stage.temperature), str(cfg.stage.id), d.get("temperature_check", "warn")))
