"""One epoch of a small SASRec on the engine, for tests/test_train.py (run plainly or under torchrun).

    python tests/_engine_sasrec.py OUT BATCH_SIZE [DTYPE]

Every training window has the full length (no padding), so each sample weighs the same and the mean of
the per-process means is the global-batch mean; dropout is 0 so the ranks draw no random masks.
"""

import sys

import torch

from fastrec.nn.sasrec import SASRec
from fastrec.train import Engine, LossForward, TrainConfig


def main(out: str, batch_size: int, dtype: str = "fp32") -> None:
    cfg = TrainConfig(device="cpu", dtype=dtype, batch_size=batch_size, lr=3e-3, epochs=1, seed=0, progress=False)
    engine = Engine(cfg, out=out)
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(1, 40, (64, 9), generator=g)  # 64 windows of 9 items over 39 items
    data = torch.utils.data.TensorDataset(seqs[:, :-1], seqs[:, 1:])
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    model = LossForward(SASRec(40, d=16, num_blocks=1, max_len=8, dropout=0.0), "loss")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model, opt, loader = engine.prepare(model, opt, loader)
    for _ in engine.epochs():
        for inputs, targets in engine.batches(loader):
            engine.step(model(inputs, targets), opt)
        engine.end_epoch({"done": 1.0})
    engine.save_checkpoint("final")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
