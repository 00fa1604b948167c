"""The PyTorch code that train, evaluate, compress and promote share: models, the epoch loop, devices and DDP,
checkpoints, augmentation, optimisers and schedules, latency measurement, training curves."""
