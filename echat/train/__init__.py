"""Training: named trainable sets per stage (``stages``); the trainer and recipes build on them."""
