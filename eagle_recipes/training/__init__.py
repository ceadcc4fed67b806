"""What runs inside a Ray Train worker, and the driver that starts the workers.

- config.py: the frozen TrainConfig a worker reads (built by the train stage, recorded in its manifest);
- batches.py: which sequences each micro-batch takes (a pure function of seed, epoch, step and rank), collate;
- schedule.py: the learning rate at a step;
- target_source.py: where the base model's outputs come from (online: the base model in the worker; cached:
  the capture stage's feature cache);
- parallel.py: DDP / FSDP wrapping and gradient clipping;
- checkpoints.py: the checkpoint folder (one class owns its layout; FSDP gathers through a subclass);
- metrics.py: metrics.jsonl, its summary and plots;
- loop.py: setup, one optimizer step, the worker loop;
- trainer.py: the driver's TorchTrainer.

Imports draft/, data/, devices and trackers; never recipe/ or stages/.
"""
