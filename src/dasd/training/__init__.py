"""Training: the LightningModule, optimizer and schedule, strategies, callbacks, and ``train(cfg)``."""
