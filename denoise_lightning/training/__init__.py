"""Training and evaluation: the data module, the LightningModule, losses, callbacks, the dnl-train / dnl-eval apps."""
