"""The driver that fastnn's PyTorch interop checks share (tests/interop/torch_interop_*.py).

Each check has an export program of fastnn's that writes cases (`<name>.weights.safetensors`, the inputs and
fastnn's outputs) and a manifest.txt naming them into a directory; the check loads every case into torch.nn and
compares. run_interop() parses the common arguments, runs the export program, checks that the required cases were
written, calls check_case(work, name, np, torch, tol) for each case (it returns (ok, message) or
(ok, largest difference, message)), then self_check(work, np, torch, tol), which must show that a wrong mapping
fails, and returns the exit status: 0 pass, 1 fail, 77 skip (no numpy or torch).
"""

import argparse
import os
import subprocess

SKIP = 77


def run_interop(description, program, required, check_case, self_check, errors, tol_help="|y_fastnn - y_torch|"):
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True, help=f"the {program} program")
    ap.add_argument("--work", required=True, help="directory for its files")
    ap.add_argument("--n", type=int, default=1000, help="inputs per case (default 1000)")
    ap.add_argument("--tol", type=float, default=1e-5, help=f"largest allowed {tol_help}")
    args = ap.parse_args()

    try:
        import numpy as np
        import torch
    except ImportError as e:
        print(f"SKIP: {e} (install python3-torch and python3-numpy; run with /usr/bin/python3)")
        return SKIP
    torch.set_num_threads(1)

    os.makedirs(args.work, exist_ok=True)
    for f in os.listdir(args.work):  # no stale case from an earlier run
        if f.endswith(".safetensors") or f == "manifest.txt":
            os.remove(os.path.join(args.work, f))
    cmd = [args.export, args.work, str(args.n)]
    print("+", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        print(f"FAIL: {program} failed")
        return 1
    with open(os.path.join(args.work, "manifest.txt")) as f:
        cases = [line.strip() for line in f if line.strip()]
    missing = [c for c in required if c not in cases]
    if missing:
        print(f"FAIL: {program} wrote no case {', '.join(missing)}")
        return 1

    failed, worst_all = [], None
    for name in cases:
        try:
            result = check_case(args.work, name, np, torch, args.tol)
            ok, msg = result[0], result[-1]
            if len(result) == 3:
                worst_all = max(worst_all or 0.0, result[1])
        except (*errors, ValueError, KeyError) as e:
            ok, msg = False, f"{name}: FAIL: {type(e).__name__}: {e}"
        print(msg, flush=True)
        if not ok:
            failed.append(name)
    if not self_check(args.work, np, torch, args.tol):
        print("FAIL: the self-check matched with a wrong mapping: the comparison proves nothing")
        return 1
    if failed:
        print(f"FAIL: {len(failed)} of {len(cases)} cases: {', '.join(failed)}")
        return 1
    worst = "" if worst_all is None else f" (largest difference {worst_all:.3e})"
    print(f"PASS: {len(cases)} cases within {args.tol:g}{worst}")
    return 0
