#!/usr/bin/env python3
"""fastnn's optimizers against torch.optim on the same parameters and gradients for 100 steps.

Runs `test_optim_init --gtest_filter=TorchParity.WriteTrajectories`, which writes, per case, the initial
parameters (three tensors), the gradient function g_t(p) = a * (p - c) + noise_t, and fastnn's learning rate and
parameters after every step. Here torch.optim.AdamW / SGD (and torch.nn.utils.clip_grad_norm_ before SGD) take the
same steps in float64 from their own parameters, and every step's parameters must agree within --tol. The
learning rates of a schedule are also checked against Keras's formula computed here. Exit 77 (skip) without torch.
"""
import argparse
import json
import math
import os
import subprocess
import sys

try:
    import torch
except ImportError:
    print("SKIP: python3-torch is not installed")
    sys.exit(77)


def cosine_decay(step, initial, decay_steps, alpha, warmup_target, warmup_steps):
    """Keras's CosineDecay with warmup."""
    if warmup_steps <= 0:
        s = min(step, decay_steps)
        return initial * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * s / decay_steps)) + alpha)
    s = min(step, decay_steps + warmup_steps)
    if s < warmup_steps:
        return (warmup_target - initial) * (s / warmup_steps) + initial
    s -= warmup_steps
    return warmup_target * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * s / decay_steps)) + alpha)


def run_case(case, tol):
    sizes = case["sizes"]
    p0 = torch.tensor(case["p0"], dtype=torch.float64)
    a = torch.tensor(case["a"], dtype=torch.float64)
    c = torch.tensor(case["c"], dtype=torch.float64)
    chunks = list(torch.split(p0, sizes))
    params = [torch.nn.Parameter(t.clone()) for t in chunks]
    a_parts, c_parts = torch.split(a, sizes), torch.split(c, sizes)
    o = case["optimizer"]
    kind = o["type"]
    if kind == "AdamW":
        opt = torch.optim.AdamW(params, lr=0.0, betas=tuple(o["betas"]), eps=o["eps"], weight_decay=o["weight_decay"])
    elif kind == "SGD":
        opt = torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"],
                              weight_decay=o["weight_decay"])
    elif kind == "clip_grad_norm":
        opt = torch.optim.SGD(params, lr=o["lr"])
    else:
        raise SystemExit("unknown case type " + kind)
    worst, worst_lr, worst_norm = 0.0, 0.0, 0.0
    for t in range(len(case["params"])):
        noise = torch.split(torch.tensor(case["noise"][t], dtype=torch.float64), sizes)
        for p, ap, cp, nz in zip(params, a_parts, c_parts, noise):
            p.grad = ap * (p.detach() - cp) + nz
        if kind == "clip_grad_norm":
            norm = float(torch.nn.utils.clip_grad_norm_(params, o["max_norm"]))
            worst_norm = max(worst_norm, abs(norm - case["norms"][t]) / max(1.0, abs(norm)))
        lr = case["lr"][t]
        if "schedule" in o:
            s = o["schedule"]
            want = cosine_decay(t, s["initial_learning_rate"], s["decay_steps"], s["alpha"], s["warmup_target"],
                                s["warmup_steps"])
            worst_lr = max(worst_lr, abs(want - lr))
            for g in opt.param_groups:
                g["lr"] = lr
        opt.step()
        mine = torch.cat([p.detach() for p in params])
        theirs = torch.tensor(case["params"][t], dtype=torch.float64)
        worst = max(worst, float((mine - theirs).abs().max()))
    moved = float((torch.tensor(case["params"][-1], dtype=torch.float64) - p0).abs().max())
    ok = worst <= tol and worst_lr <= 1e-15 and worst_norm <= 1e-12 and moved > 100 * tol
    print(f"{'ok  ' if ok else 'FAIL'} {case['name']:<52} 100 steps, max |torch - fastnn| = {worst:.3g}"
          f" (tolerance {tol:g}); rate vs Keras formula {worst_lr:.3g}; clip norm rel. {worst_norm:.3g};"
          f" weights moved {moved:.3g}")
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--writer", required=True, help="the test_optim_init executable")
    ap.add_argument("--work", required=True)
    ap.add_argument("--tol", type=float, default=1e-6)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    env = dict(os.environ, FASTNN_TORCH_PARITY_DIR=args.work)
    subprocess.run([args.writer, "--gtest_filter=TorchParity.WriteTrajectories"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    with open(os.path.join(args.work, "optim_parity.json")) as f:
        cases = json.load(f)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}")
    results = [run_case(c, args.tol) for c in cases]
    sys.exit(0 if all(results) and len(results) == 4 else 1)


if __name__ == "__main__":
    main()
