#!/usr/bin/env python3
"""PyTorch cuDNN peer of fastnn's mnist_bilstm --device cuda.

    python3 bench/gpu/torch_peer.py --data MNIST_DIR --epochs 3 --history-csv torch.csv

The same model, data and hyper-parameters as fastnn's reference model:
nn.LSTM(28, 128, bidirectional=True, batch_first=True) on cuDNN -> concat of the two final
hidden states [B, 256] -> nn.Linear(256, 10), with the softmax folded into CrossEntropyLoss.
Keras-style initialisation: glorot_uniform input kernels, orthogonal recurrent kernels, zero
biases with forget-gate bias 1 in bias_ih; bias_hh is zero and frozen (Keras has one bias per
gate). SGD lr 0.5, momentum 0.9, Nesterov, batch 128, reshuffled every epoch, last partial batch
used. Validation on the 10,000 test images in batches of 128.

The whole dataset is read from the IDX files (raw or .gz) with numpy and kept on the GPU as
uint8; batches are gathered and scaled on the GPU. The loss and accuracy are accumulated on the
GPU, so the only host synchronisation per epoch is at its end. TF32 is off unless --tf32 (fastnn's
parity mode is off too). Epoch 1 includes cuDNN's one-time setup.

Output: a CONFIG line, then per epoch a human-readable line and a machine-readable one:
    EPOCH 1 train_s=1.234 eval_s=0.120 loss=0.4 acc=0.86 val_loss=0.1 val_acc=0.97
--history-csv writes fastnn's CsvLogger columns:
    epoch,loss,accuracy,val_loss,val_accuracy,train_seconds,eval_seconds
"""

import argparse
import gzip
import os
import struct
import sys
import time

import numpy as np


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.environ.get("FASTNN_MNIST_DIR", "data"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--train-limit", type=int, default=0)
    p.add_argument("--tf32", action="store_true", help="allow TF32 in cuDNN and cuBLAS (off by default)")
    p.add_argument("--history-csv", default="")
    return p.parse_args(argv)


def read_idx(directory, name):
    path = os.path.join(directory, name)
    opener = open
    if not os.path.exists(path):
        path += ".gz"
        opener = gzip.open
    with opener(path, "rb") as f:
        raw = f.read()
    magic = struct.unpack(">I", raw[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def keras_init(lstm, dense, torch):
    H = lstm.hidden_size
    with torch.no_grad():
        for sfx in ("", "_reverse"):
            w_ih = getattr(lstm, "weight_ih_l0" + sfx)  # [4H, F], gates i, f, g, o (Keras's order)
            w_hh = getattr(lstm, "weight_hh_l0" + sfx)  # [4H, H]
            b_ih = getattr(lstm, "bias_ih_l0" + sfx)
            b_hh = getattr(lstm, "bias_hh_l0" + sfx)
            fan_in, fan_out = w_ih.shape[1], w_ih.shape[0]  # Keras kernel [F, 4H]
            lim = (6.0 / (fan_in + fan_out)) ** 0.5
            w_ih.uniform_(-lim, lim)
            torch.nn.init.orthogonal_(w_hh.T)  # Keras: orthogonal [H, 4H] recurrent kernel
            b_ih.zero_()
            b_ih[H:2 * H] = 1.0  # unit_forget_bias
            b_hh.zero_()
            b_hh.requires_grad_(False)
        lim = (6.0 / (dense.in_features + dense.out_features)) ** 0.5
        dense.weight.uniform_(-lim, lim)
        dense.bias.zero_()


def main(argv):
    a = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("torch_peer: PyTorch sees no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cudnn.enabled = True
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.manual_seed(a.seed)
    dev = torch.device("cuda")

    xtr = read_idx(a.data, "train-images-idx3-ubyte")
    ytr = read_idx(a.data, "train-labels-idx1-ubyte")
    xte = read_idx(a.data, "t10k-images-idx3-ubyte")
    yte = read_idx(a.data, "t10k-labels-idx1-ubyte")
    if a.train_limit > 0:
        xtr, ytr = xtr[:a.train_limit], ytr[:a.train_limit]
    xtr_g = torch.from_numpy(xtr.copy()).to(dev)
    ytr_g = torch.from_numpy(ytr.astype(np.int64)).to(dev)
    xte_g = torch.from_numpy(xte.copy()).to(dev)
    yte_g = torch.from_numpy(yte.astype(np.int64)).to(dev)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(28, 128, batch_first=True, bidirectional=True)
            self.dense = torch.nn.Linear(256, 10)

        def forward(self, x):
            _, (h, _) = self.lstm(x)  # h: [2, B, 128] = forward final, backward final
            return self.dense(torch.cat((h[0], h[1]), dim=1))

    net = Net().to(dev)
    keras_init(net.lstm, net.dense, torch)
    params = [p for p in net.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    opt = torch.optim.SGD(params, lr=a.lr, momentum=a.momentum, nesterov=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    print(f"CONFIG torch={torch.__version__} cuda={torch.version.cuda} cudnn={torch.backends.cudnn.version()} "
          f"device={torch.cuda.get_device_name(0)!r} params={n_params} tf32={a.tf32} train={len(ytr)} "
          f"test={len(yte)} batch={a.batch_size}", flush=True)

    n = xtr_g.shape[0]
    bs = a.batch_size
    rows = []
    gen = torch.Generator(device=dev)
    gen.manual_seed(a.seed)
    for epoch in range(1, a.epochs + 1):
        net.train()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=dev, generator=gen)
        loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
        hits = torch.zeros((), device=dev, dtype=torch.int64)
        for s in range(0, n, bs):
            idx = perm[s:s + bs]
            x = xtr_g[idx].float().div_(255.0)
            y = ytr_g[idx]
            out = net(x)
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().double() * idx.numel()
            hits += (out.detach().argmax(1) == y).sum()
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        net.eval()
        vloss = torch.zeros((), device=dev, dtype=torch.float64)
        vhits = torch.zeros((), device=dev, dtype=torch.int64)
        with torch.no_grad():
            for s in range(0, xte_g.shape[0], bs):
                x = xte_g[s:s + bs].float().div_(255.0)
                y = yte_g[s:s + bs]
                out = net(x)
                vloss += torch.nn.functional.cross_entropy(out, y, reduction="sum").double()
                vhits += (out.argmax(1) == y).sum()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        r = dict(epoch=epoch, loss=loss_sum.item() / n, acc=hits.item() / n, val_loss=vloss.item() / len(yte),
                 val_acc=vhits.item() / len(yte), train_s=t1 - t0, eval_s=t2 - t1)
        rows.append(r)
        print(f"Epoch {epoch}/{a.epochs} - {r['train_s']:.3f}s train + {r['eval_s']:.3f}s eval - loss: {r['loss']:.4f}"
              f" - acc: {r['acc']:.4f} - val_loss: {r['val_loss']:.4f} - val_acc: {r['val_acc']:.4f}", flush=True)
        print(f"EPOCH {epoch} train_s={r['train_s']:.4f} eval_s={r['eval_s']:.4f} loss={r['loss']:.6f} "
              f"acc={r['acc']:.6f} val_loss={r['val_loss']:.6f} val_acc={r['val_acc']:.6f}", flush=True)
    if a.history_csv:
        with open(a.history_csv, "w") as f:
            f.write("epoch,loss,accuracy,val_loss,val_accuracy,train_seconds,eval_seconds\n")
            for r in rows:
                f.write(f"{r['epoch']},{r['loss']:.6f},{r['acc']:.6f},{r['val_loss']:.6f},{r['val_acc']:.6f},"
                        f"{r['train_s']:.4f},{r['eval_s']:.4f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
