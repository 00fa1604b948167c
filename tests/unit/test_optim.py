import torch

from tasks.common.config import TrainParams
from tasks.nn.optim import build_optimizer, build_schedule


def test_schedules_decay_or_warm_up_over_all_batches():
    model = torch.nn.Linear(2, 2)
    for name, expected in (("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)):
        assert type(build_optimizer(TrainParams(optimizer=name), model.parameters())) is expected
    for schedule in ("cosine", "onecycle"):
        cfg = TrainParams(schedule=schedule, epochs=4, lr=0.1)
        optimizer = build_optimizer(cfg, model.parameters())
        scheduler = build_schedule(cfg, optimizer, steps_per_epoch=10)
        lrs = []
        for _ in range(40):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        assert lrs[-1] < 0.01 * cfg.lr
        assert (max(lrs) == lrs[0]) == (schedule == "cosine")  # one-cycle warms up first
