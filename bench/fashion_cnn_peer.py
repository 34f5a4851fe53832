#!/usr/bin/python3
"""PyTorch peer of fastnn's examples/fashion_cnn: the same CNN, data, initial weights and training.

    bench/fashion_cnn_peer.py --epochs 5 --threads 1 --init-weights init.safetensors --json out.json
    bench/fashion_cnn_peer.py --epochs 0 --write-init init.safetensors   # Keras-layout weights of its own

The model, in Keras's terms (channels-last input 28x28x1, pixels / 255):
    Conv2D(32, 3, padding="same") -> BatchNormalization(momentum 0.99, epsilon 1e-3) -> ReLU -> MaxPooling2D(2)
    -> Conv2D(64, 3, padding="same") -> BatchNormalization -> ReLU -> MaxPooling2D(2)
    -> Flatten (h, w, c order) -> Dense(128, relu) -> Dropout(0.3) -> Dense(10, softmax)
Adam (lr 1e-3, betas 0.9 / 0.999, epsilon 1e-7), batch 128, sparse categorical cross-entropy (here
CrossEntropyLoss on the logits), the training set shuffled every epoch. In torch.nn: BatchNorm2d
with momentum 1 - 0.99 = 0.01 and eps 1e-3; the flatten permutes NCHW to NHWC first, so that
Dense's kernel rows are in Keras's order. PyTorch keeps the unbiased batch variance in
running_var, Keras the biased one; with batches of 128 x 14 x 14 or more values the difference is
below 0.01 %.

Data: the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte, each raw or .gz) in --data; Debian's dataset-fashion-mnist puts them in
/usr/share/datasets/fashion-mnist (an MNIST directory with the same names works too). Training on
the 60,000 training images (--limit N: the first N), validation on the 10,000 test images.

--init-weights FILE starts from a safetensors file in Keras's layout (fastnn's
--init-weights-out): conv kernels [kh, kw, in, out] with bias [out], BatchNormalization's gamma,
beta, moving_mean, moving_variance, Dense kernels [in, out] with bias [out]. Tensors are grouped
by the name before the last '.', each group classified by what it holds (4-D kernel: Conv2D; gamma /
beta / moving_*: BatchNormalization; 2-D kernel: Dense) and the groups of a kind ordered by their
name's numeric suffix (conv2d = 0, conv2d_1 = 1); every shape is checked. Without it the weights
are drawn like Keras's defaults (glorot_uniform kernels, zero biases) from --seed.
--write-init FILE writes the initial weights in that layout, with Keras's names (conv2d.kernel,
batch_normalization.gamma, ..., dense_1.bias), before training.

Output: machine, CONFIG and BLAS lines, `initial: val_loss X val_acc Y` of the untrained model,
one line per epoch:
    EPOCH 1 train_s=12.345 eval_s=1.234 loss=0.456789 acc=0.834567 val_loss=0.345678 val_acc=0.876543
and `final: ...`. --json FILE writes the same as a summary (with the peak RSS).
"""

import argparse
import json
import os
import platform
import re
import struct
import sys
import time

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"
IDX_NAMES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "val_x": "t10k-images-idx3-ubyte", "val_y": "t10k-labels-idx1-ubyte"}
CLASSES = 10


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="directory of the IDX files, raw or .gz (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (and OpenMP/BLAS threads)")
    p.add_argument("--seed", type=int, default=42, help="shuffling, dropout (and the weights without --init-weights)")
    p.add_argument("--limit", type=int, default=0, help="train on the first N training images only (0: all)")
    p.add_argument("--init-weights", default="", help="Keras-layout safetensors file to start from")
    p.add_argument("--write-init", default="", help="write the initial weights (Keras layout) to this file")
    p.add_argument("--json", default="", help="write a JSON summary")
    a = p.parse_args(argv)
    if a.epochs < 0 or a.threads < 1 or a.batch_size < 1 or a.limit < 0 or not a.lr > 0:
        p.error("--epochs and --limit must be >= 0, --threads and --batch-size >= 1, --lr > 0")
    return a


ARGS = parse_args(sys.argv[1:])
# Thread counts must be fixed before torch loads its OpenMP and BLAS runtimes.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
from fastnn_safetensors import read_safetensors  # noqa: E402
from fastnn_peer_env import blas_info, cpu_model, num, peak_rss_mb  # noqa: E402


def die(msg):
    print(f"fashion_cnn_peer: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


# ---- data ------------------------------------------------------------------------------------
def read_idx(directory, name):
    """The IDX file `name` (or `name.gz`) in directory as a uint8 array of its declared shape."""
    import gzip
    for path, opener in ((os.path.join(directory, name), open), (os.path.join(directory, name + ".gz"), gzip.open)):
        if os.path.exists(path):
            break
    else:
        die(f"{directory}: no {name} or {name}.gz (apt-get install dataset-fashion-mnist, or --data DIR)")
    try:
        with opener(path, "rb") as f:
            blob = f.read()
    except (OSError, EOFError) as e:
        die(f"{path}: {e}")
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] != 0x08:
        die(f"{path}: not an IDX file of unsigned bytes")
    ndim = blob[3]
    if len(blob) < 4 + 4 * ndim:
        die(f"{path}: truncated header")
    shape = struct.unpack(f">{ndim}I", blob[4:4 + 4 * ndim])
    count = int(np.prod(shape))
    if len(blob) != 4 + 4 * ndim + count:
        die(f"{path}: {len(blob) - 4 - 4 * ndim} data bytes, the header declares {list(shape)}")
    return np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_data(directory, limit):
    d = {k: read_idx(directory, n) for k, n in IDX_NAMES.items()}
    for split in ("train", "val"):
        x, y = d[split + "_x"], d[split + "_y"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or y.shape[0] != x.shape[0]:
            die(f"{directory}: {split} images {list(x.shape)} and labels {list(y.shape)}: expected [N, 28, 28] and [N]")
        if y.max() >= CLASSES:
            die(f"{directory}: {split} label {int(y.max())} is not in [0, {CLASSES})")
    if limit:
        d["train_x"], d["train_y"] = d["train_x"][:limit], d["train_y"][:limit]

    def images(x):  # NCHW float32 in [0, 1]
        return torch.from_numpy(x.astype(np.float32) / np.float32(255.0)).unsqueeze(1).contiguous()

    return (images(d["train_x"]), torch.from_numpy(d["train_y"].astype(np.int64)),
            images(d["val_x"]), torch.from_numpy(d["val_y"].astype(np.int64)))


# ---- model -----------------------------------------------------------------------------------
class FashionCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32, eps=1e-3, momentum=0.01)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(64, eps=1e-3, momentum=0.01)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(7 * 7 * 64, 128)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(128, CLASSES)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = x.permute(0, 2, 3, 1).flatten(1)  # Keras's Flatten of channels-last: (h, w, c)
        return self.fc2(self.drop(torch.relu(self.fc1(x))))

    def convs(self):
        return [self.conv1, self.conv2]

    def bns(self):
        return [self.bn1, self.bn2]

    def denses(self):
        return [self.fc1, self.fc2]

    def keras_init(self):
        """Keras's defaults: glorot_uniform kernels (fans of the Keras kernel shape), zero biases."""
        with torch.no_grad():
            for conv in self.convs():
                out_c, in_c, kh, kw = conv.weight.shape
                bound = (6.0 / (kh * kw * in_c + kh * kw * out_c)) ** 0.5
                nn.init.uniform_(conv.weight, -bound, bound)
                nn.init.zeros_(conv.bias)
            for fc in self.denses():
                nn.init.xavier_uniform_(fc.weight)
                nn.init.zeros_(fc.bias)
            for bn in self.bns():
                bn.reset_parameters()  # gamma 1, beta 0, moving mean 0, moving variance 1

    def keras_tensors(self):
        """{Keras name: float32 array in Keras's layout}."""
        out = {}
        for i, conv in enumerate(self.convs()):
            pre = "conv2d" + (f"_{i}" if i else "")
            out[pre + ".kernel"] = conv.weight.detach().permute(2, 3, 1, 0).numpy()
            out[pre + ".bias"] = conv.bias.detach().numpy()
        for i, bn in enumerate(self.bns()):
            pre = "batch_normalization" + (f"_{i}" if i else "")
            out[pre + ".gamma"] = bn.weight.detach().numpy()
            out[pre + ".beta"] = bn.bias.detach().numpy()
            out[pre + ".moving_mean"] = bn.running_mean.numpy()
            out[pre + ".moving_variance"] = bn.running_var.numpy()
        for i, fc in enumerate(self.denses()):
            pre = "dense" + (f"_{i}" if i else "")
            out[pre + ".kernel"] = fc.weight.detach().t().numpy()
            out[pre + ".bias"] = fc.bias.detach().numpy()
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}

    def load_keras(self, path):
        """Copies a Keras-layout safetensors file into the model (see the module's docstring)."""
        w, meta = read_safetensors(path, np)
        groups = {}
        for name, arr in w.items():
            if "." not in name:
                raise ValueError(f"tensor '{name}' has no '<layer>.<weight>' name")
            prefix, leaf = name.rsplit(".", 1)
            groups.setdefault(prefix, {})[leaf] = arr
        kinds = {"conv": [], "bn": [], "dense": []}
        bn_leaves = {"gamma", "beta", "moving_mean", "moving_variance"}
        for prefix, g in groups.items():
            if "kernel" in g and g["kernel"].ndim == 4:
                kind, need = "conv", {"kernel", "bias"}
            elif "kernel" in g and g["kernel"].ndim == 2:
                kind, need = "dense", {"kernel", "bias"}
            elif bn_leaves & set(g):
                kind, need = "bn", bn_leaves
            else:
                raise ValueError(f"cannot tell which layer '{prefix}' ({', '.join(sorted(g))}) belongs to")
            if set(g) != need:
                raise ValueError(f"'{prefix}' holds {', '.join(sorted(g))}; "
                                 f"a {kind} layer has {', '.join(sorted(need))}")
            m = re.search(r"_(\d+)$", prefix)
            kinds[kind].append((int(m.group(1)) if m else 0, prefix))
        modules = {"conv": self.convs(), "bn": self.bns(), "dense": self.denses()}
        for kind, found in kinds.items():
            found.sort()
            if len(found) != len(modules[kind]):
                raise ValueError(f"{len(found)} {kind} layers ({', '.join(p for _, p in found) or 'none'}), "
                                 f"the model has {len(modules[kind])}")
            if len({s for s, _ in found}) != len(found):
                raise ValueError(f"{kind} layers with the same numeric suffix: {', '.join(p for _, p in found)}")

        def get(prefix, leaf, shape):
            a = groups[prefix][leaf]
            if list(a.shape) != list(shape):
                raise ValueError(f"'{prefix}.{leaf}' is {list(a.shape)}, expected {list(shape)}")
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        with torch.no_grad():
            for (_, pre), conv in zip(kinds["conv"], self.convs()):
                out_c, in_c, kh, kw = conv.weight.shape
                conv.weight.copy_(get(pre, "kernel", [kh, kw, in_c, out_c]).permute(3, 2, 0, 1))
                conv.bias.copy_(get(pre, "bias", [out_c]))
            for (_, pre), bn in zip(kinds["bn"], self.bns()):
                c = bn.num_features
                bn.weight.copy_(get(pre, "gamma", [c]))
                bn.bias.copy_(get(pre, "beta", [c]))
                bn.running_mean.copy_(get(pre, "moving_mean", [c]))
                bn.running_var.copy_(get(pre, "moving_variance", [c]))
            for (_, pre), fc in zip(kinds["dense"], self.denses()):
                out_f, in_f = fc.weight.shape
                fc.weight.copy_(get(pre, "kernel", [in_f, out_f]).t())
                fc.bias.copy_(get(pre, "bias", [out_f]))
        return meta


def write_safetensors(path, tensors, metadata):
    """A safetensors file of float32 tensors: 8-byte little-endian header length, JSON header, data."""
    header, offset = {"__metadata__": metadata}, 0
    for name in sorted(tensors):
        n = tensors[name].nbytes
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in sorted(tensors):
            f.write(tensors[name].astype("<f4").tobytes())


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

    xtr, ytr, xva, yva = load_data(a.data, a.limit)
    model = FashionCNN()
    if a.init_weights:
        try:
            model.load_keras(a.init_weights)
        except (OSError, ValueError, KeyError) as e:
            die(f"--init-weights {a.init_weights}: {e}")
        init = a.init_weights
    else:
        model.keras_init()
        init = "keras-style random"
    if a.write_init:
        try:
            write_safetensors(a.write_init, model.keras_tensors(),
                              {"writer": "bench/fashion_cnn_peer.py", "layout": "keras", "seed": str(a.seed)})
        except OSError as e:
            die(f"--write-init {a.write_init}: {e}")
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    nparams = sum(p.numel() for p in model.parameters())
    cpu, cores = cpu_model(), os.cpu_count()
    print(f"machine: {cpu}, {cores} cores", flush=True)
    print(f"CONFIG torch={torch.__version__} numpy={np.__version__} python={platform.python_version()} "
          f"threads={torch.get_num_threads()} mkldnn={torch.backends.mkldnn.is_available()} params={nparams} "
          f"train={xtr.shape[0]} val={xva.shape[0]} batch={a.batch_size} lr={a.lr} seed={a.seed} init={init}",
          flush=True)
    blas = blas_info()
    print(f"BLAS core={blas['core'] or 'unknown'} config={blas['config'] or 'not OpenBLAS'} "
          f"libraries={','.join(blas['libraries']) or 'none found'} "
          f"env={' '.join(f'{k}={v}' for k, v in blas['env'].items()) or 'no OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE'}",
          flush=True)

    n, bs = xtr.shape[0], a.batch_size

    def evaluate():
        model.eval()
        vloss, vcorrect = 0.0, 0
        with torch.no_grad():
            for begin in range(0, xva.shape[0], bs):
                yb = yva[begin:begin + bs]
                logits = model(xva[begin:begin + bs])
                vloss += loss_fn(logits, yb).item() * yb.shape[0]
                vcorrect += (logits.argmax(1) == yb).sum().item()
        return vloss / xva.shape[0], vcorrect / xva.shape[0]

    history = []
    init_vl, init_va = evaluate()
    print(f"initial: val_loss {init_vl:.6f} val_acc {init_va:.6f}", flush=True)
    for epoch in range(1, a.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct = 0.0, 0
        for begin in range(0, n, bs):
            idx = perm[begin:begin + bs]
            yb = ytr[idx]
            opt.zero_grad(set_to_none=True)
            logits = model(xtr[idx])
            loss = loss_fn(logits, yb)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * idx.shape[0]
            correct += (logits.detach().argmax(1) == yb).sum().item()
        t1 = time.perf_counter()
        vl, va = evaluate()
        t2 = time.perf_counter()
        e = {"epoch": epoch, "train_seconds": t1 - t0, "eval_seconds": t2 - t1, "loss": loss_sum / n,
             "accuracy": correct / n, "val_loss": vl, "val_accuracy": va}
        history.append(e)
        print(f"EPOCH {epoch} train_s={e['train_seconds']:.3f} eval_s={e['eval_seconds']:.3f} loss={e['loss']:.6f} "
              f"acc={e['accuracy']:.6f} val_loss={e['val_loss']:.6f} val_acc={e['val_accuracy']:.6f}", flush=True)

    if history:
        last = history[-1]
        print(f"final: loss {last['loss']:.4f} acc {last['accuracy']:.4f} val_loss {last['val_loss']:.4f} "
              f"val_acc {last['val_accuracy']:.4f}", flush=True)
    if a.json:
        summary = {
            "impl": "pytorch",
            "machine": {"cpu": cpu, "cores": cores},
            "config": {"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "threads": a.threads,
                       "seed": a.seed, "limit": a.limit, "data": a.data, "init_weights": a.init_weights,
                       "init": init, "torch": torch.__version__, "numpy": np.__version__},
            "blas": blas,
            "train_samples": int(n),
            "val_samples": int(xva.shape[0]),
            "params": nparams,
            "initial_val_loss": init_vl,
            "initial_val_accuracy": init_va,
            "epochs": [{k: num(v) for k, v in e.items()} for e in history],
            "final_val_accuracy": history[-1]["val_accuracy"] if history else None,
            "peak_rss_mb": peak_rss_mb(),
        }
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
