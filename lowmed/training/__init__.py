"""Training: the epoch loop, checkpoints and resume, and the train/finetune entry points."""
