#!/usr/bin/python3
"""PyTorch peer of fastnn's mnist_bilstm: the same model, data and hyper-parameters.

    /usr/bin/python3 bench/torch_peer.py --data data --epochs 1 --train-limit 12800 --threads 2

Use Debian's python3-torch (1.13) through /usr/bin/python3, with OpenBLAS from
libopenblas0-pthread (the BLAS line of the CONFIG header shows which library was loaded).

Model: nn.LSTM(28, 128, bidirectional=True, batch_first=True) -> concat of the two final hidden
states [B, 256] -> nn.Linear(256, 10), i.e. Keras's Bidirectional(LSTM(128)) -> Dense(10, softmax)
with the softmax folded into CrossEntropyLoss. Keras-style initialisation: glorot_uniform input
kernels, orthogonal recurrent kernels, zero biases with the forget-gate bias 1 (bias_ih; bias_hh
is zero and frozen, since Keras has one bias per gate: 163,338 trainable parameters as in Keras). SGD lr 0.5, momentum 0.9, Nesterov (equivalent to Keras's formulation at a constant
learning rate), batch 128, reshuffled each epoch; the last, partial batch is used. Validation on
the 10,000 test images in batches of 128, as fastnn does.

Output: a CONFIG header line, a human-readable line per epoch and one machine-readable line per
epoch:
    EPOCH 1 train_s=21.234 eval_s=1.020 loss=0.612345 acc=0.801234 val_loss=0.21 val_acc=0.9345
--history-csv FILE writes the columns of fastnn's CsvLogger:
    epoch,loss,accuracy,val_loss,val_accuracy,train_seconds,eval_seconds
"""

import argparse
import gzip
import os
import re
import struct
import sys
import time


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.environ.get("FASTNN_MNIST_DIR", "data"),
                   help="directory with the four MNIST IDX files, raw or .gz (default $FASTNN_MNIST_DIR or data)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-limit", type=int, default=0, help="use only the first N training samples (0 = all)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads and OpenBLAS threads")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--history-csv", default="", help="write per-epoch logs in fastnn's CSV format")
    p.add_argument("--quiet", action="store_true", help="only the CONFIG and EPOCH lines")
    a = p.parse_args(argv)
    if a.epochs < 0 or a.train_limit < 0 or a.threads < 1 or a.batch_size < 1:
        p.error("--epochs and --train-limit must be >= 0, --threads and --batch-size >= 1")
    return a


ARGS = parse_args(sys.argv[1:])
# Thread counts must be fixed before numpy / torch load their BLAS and OpenMP runtimes.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import ctypes  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


# ---- data ------------------------------------------------------------------------------------
def read_idx(path, magic):
    if not os.path.exists(path) and os.path.exists(path + ".gz"):
        path += ".gz"
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4:
        raise SystemExit(f"torch_peer: {path}: truncated header")
    (m,) = struct.unpack(">I", raw[:4])
    if m != magic:
        raise SystemExit(f"torch_peer: {path}: magic 0x{m:08x}, expected 0x{magic:08x}")
    ndim = m & 0xFF
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    n = int(np.prod(dims))
    body = raw[4 + 4 * ndim:]
    if len(body) < n:
        raise SystemExit(f"torch_peer: {path}: {len(body)} data bytes, expected {n}")
    return np.frombuffer(body, dtype=np.uint8, count=n).reshape(dims)


def load_split(d, prefix):
    x = read_idx(os.path.join(d, f"{prefix}-images-idx3-ubyte"), 0x803)
    y = read_idx(os.path.join(d, f"{prefix}-labels-idx1-ubyte"), 0x801)
    if x.shape[0] != y.shape[0]:
        raise SystemExit(f"torch_peer: {prefix}: {y.shape[0]} labels for {x.shape[0]} images")
    return torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))


# ---- model -----------------------------------------------------------------------------------
class BiLSTM(nn.Module):
    def __init__(self, features=28, units=128, classes=10):
        super().__init__()
        self.lstm = nn.LSTM(features, units, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * units, classes)
        self.units = units

    def keras_init(self):
        h = self.units
        for name, p in self.lstm.named_parameters():
            with torch.no_grad():
                if name.startswith("weight_ih"):
                    nn.init.xavier_uniform_(p)          # Keras kernel [F, 4H]: limit sqrt(6 / (F + 4H))
                elif name.startswith("weight_hh"):
                    nn.init.orthogonal_(p)              # Keras recurrent kernel [H, 4H] (transposed here)
                elif name.startswith("bias_ih"):
                    p.zero_()
                    p[h:2 * h].fill_(1.0)               # unit_forget_bias; gate order i, f, g, o as Keras
                elif name.startswith("bias_hh"):
                    p.zero_()                           # Keras has one bias: keep this one at zero
                    p.requires_grad_(False)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        _, (h_n, _) = self.lstm(x)                      # h_n [2, B, H]: forward final, backward final
        return self.fc(torch.cat((h_n[0], h_n[1]), dim=1))


# ---- BLAS information ------------------------------------------------------------------------
def blas_info():
    """torch's build BLAS line, the BLAS libraries mapped into this process, OpenBLAS's config."""
    m = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    build_blas = m.group(1) if m else "?"
    mapped = set()
    try:
        with open("/proc/self/maps") as f:
            for ln in f:
                path = ln.split()[-1] if len(ln.split()) >= 6 else ""
                if "blas" in path.lower() or "mkl" in path.lower():
                    mapped.add(os.path.realpath(path))
    except OSError:
        pass
    openblas = ""
    for path in sorted(mapped):
        try:
            lib = ctypes.CDLL(path)
            cfg = lib.openblas_get_config
            cfg.restype = ctypes.c_char_p
            lib.openblas_set_num_threads(ctypes.c_int(ARGS.threads))
            openblas = f"{cfg().decode()} threads={lib.openblas_get_num_threads()} parallel={lib.openblas_get_parallel()}"
            break
        except (OSError, AttributeError):
            continue
    return build_blas, sorted(mapped), openblas


# ---- training --------------------------------------------------------------------------------
def main():
    a = ARGS
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)

    xtr, ytr = load_split(a.data, "train")
    xte, yte = load_split(a.data, "t10k")
    if 0 < a.train_limit < xtr.shape[0]:
        xtr, ytr = xtr[:a.train_limit], ytr[:a.train_limit]

    model = BiLSTM()
    model.keras_init()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=a.lr, momentum=a.momentum, nesterov=True)
    loss_fn = nn.CrossEntropyLoss()
    nparams = sum(p.numel() for p in model.parameters() if p.requires_grad)

    with torch.no_grad():  # load the BLAS before reporting which one it is
        model(xtr[:2].float().div_(255.0))
    build_blas, mapped, openblas = blas_info()
    print(f"CONFIG torch={torch.__version__} numpy={np.__version__} python={sys.version.split()[0]} "
          f"threads={torch.get_num_threads()} interop={torch.get_num_interop_threads()} "
          f"build_blas={build_blas} blas_libs={','.join(mapped) or 'none'} "
          f"openblas=\"{openblas or 'not loaded'}\" params={nparams} "
          f"train={xtr.shape[0]} val={xte.shape[0]} batch={a.batch_size} seed={a.seed}", flush=True)
    if nparams != 163338:
        print(f"torch_peer: warning: {nparams} trainable parameters, the reference model has 163,338",
              file=sys.stderr, flush=True)
    if not openblas:
        print("torch_peer: warning: OpenBLAS is not loaded: install libopenblas0-pthread "
              "(update-alternatives --display libblas.so.3-x86_64-linux-gnu)", file=sys.stderr, flush=True)

    csv = None
    if a.history_csv:
        csv = open(a.history_csv, "w")
        csv.write("epoch,loss,accuracy,val_loss,val_accuracy,train_seconds,eval_seconds\n")
        csv.flush()

    n, bs = xtr.shape[0], a.batch_size
    for epoch in range(1, a.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct = 0.0, 0
        for begin in range(0, n, bs):
            idx = perm[begin:begin + bs]
            xb = xtr[idx].float().div_(255.0)
            yb = ytr[idx]
            opt.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * idx.shape[0]
            correct += (logits.detach().argmax(1) == yb).sum().item()
        t1 = time.perf_counter()
        model.eval()
        vloss, vcorrect = 0.0, 0
        with torch.no_grad():
            for begin in range(0, xte.shape[0], bs):
                xb = xte[begin:begin + bs].float().div_(255.0)
                yb = yte[begin:begin + bs]
                logits = model(xb)
                vloss += loss_fn(logits, yb).item() * yb.shape[0]
                vcorrect += (logits.argmax(1) == yb).sum().item()
        t2 = time.perf_counter()
        tr, ev = t1 - t0, t2 - t1
        loss, acc = loss_sum / n, correct / n
        vl, va = vloss / xte.shape[0], vcorrect / xte.shape[0]
        if not a.quiet:
            print(f"Epoch {epoch}/{a.epochs} - train {tr:.2f}s ({tr / ((n + bs - 1) // bs) * 1e3:.1f} ms/step) "
                  f"- eval {ev:.2f}s - loss: {loss:.4f} - acc: {acc:.4f} - val_loss: {vl:.4f} - val_acc: {va:.4f}",
                  flush=True)
        print(f"EPOCH {epoch} train_s={tr:.3f} eval_s={ev:.3f} loss={loss:.6f} acc={acc:.6f} "
              f"val_loss={vl:.6f} val_acc={va:.6f}", flush=True)
        if csv:
            csv.write(f"{epoch},{loss:.6f},{acc:.6f},{vl:.6f},{va:.6f},{tr:.3f},{ev:.3f}\n")
            csv.flush()
    if csv:
        csv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
