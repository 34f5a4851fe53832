#!/usr/bin/env python3
"""Checks the include layering of fastnn's headers.

Every *.hpp and *.cuh under <include-dir>/fastnn is read, and each of its
`#include "fastnn/..."` lines becomes an edge of the include graph. The check fails
(exit status 1, one line per problem, each naming both files) on:

  * an include cycle (the cycle is printed as a path a -> b -> ... -> a);
  * an upward include: a header including a header of a higher rank (RANKS below);
  * a header whose path matches no entry of RANKS ("add it to the rank table");
  * an include of a fastnn header that does not exist;
  * a fastnn header included with <...> or by a relative "..." path, which would hide the
    edge from this check (write it as #include "fastnn/<path>").

    check_layering.py --include-dir include      the check (ctest header_layering)
    check_layering.py --self-test                 proves on fake headers that each kind of
                                                  problem is reported (ctest header_layering_selftest)

Python 3 standard library only.
"""

import argparse
import os
import re
import sys
import tempfile

# ---- the rank table ------------------------------------------------------------------------
# Paths are relative to include/fastnn. An entry ending in "/" is a directory prefix, any other
# entry is one file. The longest matching entry gives a header its rank, and a header may
# include headers of its own rank or a lower one, never a higher one.
#
# A new directory or top-level header must be added here (the check reports it until it is).
RANKS = [
    # 0: the foundation: tensors, shapes, devices, errors, activations, options, parsing.
    ("config.hpp", 0),
    ("core/", 0),
    # 1: the compute backends (CPU and CUDA kernels/ops), weight initialisers, data sets.
    ("backend/", 1),
    ("backend/cpu/", 1),
    ("backend/cuda/", 1),
    ("init/", 1),
    ("data/", 1),
    # 1: communicators for data-parallel training (MPI, NCCL).
    ("distributed/", 1),
    ("distributed/cuda/", 1),
    # 2: layers, including their CUDA specialisations.
    ("layers/", 2),
    ("layers/cuda/", 2),
    # 3: what trains layers: losses, metrics, optimizers.
    ("losses/", 3),
    ("metrics/", 3),
    ("optim/", 3),
    # 4: models, including the CUDA training-step machinery.
    ("model/", 4),
    ("model/cuda/", 4),
    # 5: reading/writing models and testing helpers built on them.
    ("io/", 5),
    ("testing/", 5),
    # 6: the umbrella headers.
    ("fastnn.hpp", 6),
    ("cuda.hpp", 6),
    ("vision.hpp", 6),
    ("graph.hpp", 6),
    ("transformer.hpp", 6),
]

HEADER_SUFFIXES = (".hpp", ".cuh", ".inl")

# `#include "..."` or `#include <...>` at the start of a line (after comments are stripped).
INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.MULTILINE)


def rank_of(rel):
    """(rank, matching entry) of a header path relative to include/fastnn, or (None, None)."""
    best = None
    for entry, rank in RANKS:
        hit = rel.startswith(entry) if entry.endswith("/") else rel == entry
        if hit and (best is None or len(entry) > len(best[1])):
            best = (rank, entry)
    return best if best else (None, None)


def strip_comments(text):
    """Blanks out /* */ and // comments, keeping line breaks so that line numbers stay right."""
    def blank(m):
        return re.sub(r"[^\n]", " ", m.group(0))
    # String and character literals are matched too, and kept, so that "//" or "/*" inside them
    # is left alone.
    return re.sub(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|/\*.*?\*/|//[^\n]*',
                  lambda m: m.group(0) if m.group(0)[0] in "\"'" else blank(m), text, flags=re.DOTALL)


def scan(include_dir):
    """Returns ({header: [(line, include)]}, [problems]) for include_dir/fastnn.

    Header names are 'fastnn/<path>'; only includes of fastnn headers are kept."""
    root = os.path.join(include_dir, "fastnn")
    graph, problems = {}, []
    if not os.path.isdir(root):
        return graph, ["no directory %s" % root]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.endswith(HEADER_SUFFIXES):
                continue
            path = os.path.join(dirpath, name)
            header = "fastnn/" + os.path.relpath(path, root).replace(os.sep, "/")
            with open(path, encoding="utf-8", errors="replace") as f:
                text = strip_comments(f.read())
            edges = []
            for m in INCLUDE_RE.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                delim, target = m.group(1), m.group(2).strip()
                if target.startswith("fastnn/"):
                    if delim == "<":
                        problems.append('%s:%d: includes <%s>: write it as #include "%s" so that the '
                                        "layering check sees it" % (header, line, target, target))
                    edges.append((line, target))
                elif delim == '"':
                    problems.append('%s:%d: includes "%s" by a relative path: write it as '
                                    '#include "fastnn/<path>" so that the layering check sees it'
                                    % (header, line, target))
            graph[header] = edges
    return graph, problems


def find_cycles(graph):
    """The cycle closed by each back edge of a depth-first search of the include graph, as a
    path [a, b, ..., a]: at least one cycle through every group of headers that include each
    other, each reported once (rotations of the same cycle are merged)."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = {h: WHITE for h in graph}
    stack, cycles, seen = [], [], set()

    def visit(start):
        # Iterative DFS: frames of (header, iterator over its includes).
        color[start] = GREY
        stack.append(start)
        frames = [(start, iter(graph[start]))]
        while frames:
            node, it = frames[-1]
            advanced = False
            for _, target in it:
                if target not in graph:
                    continue  # a missing header: reported separately
                if color[target] == GREY:
                    cyc = stack[stack.index(target):]
                    k = cyc.index(min(cyc))
                    key = tuple(cyc[k:] + cyc[:k])
                    if key not in seen:
                        seen.add(key)
                        cycles.append(cyc + [target])
                elif color[target] == WHITE:
                    color[target] = GREY
                    stack.append(target)
                    frames.append((target, iter(graph[target])))
                    advanced = True
                    break
            if not advanced:
                color[node] = BLACK
                stack.pop()
                frames.pop()

    for h in sorted(graph):
        if color[h] == WHITE:
            visit(h)
    return cycles


def check(include_dir):
    """Returns (number of headers, number of fastnn includes, [problem lines])."""
    graph, problems = scan(include_dir)
    n_includes = sum(len(e) for e in graph.values())

    for header in sorted(graph):
        rel = header[len("fastnn/"):]
        rank, entry = rank_of(rel)
        if rank is None:
            problems.append("%s: matches no entry of the rank table: add it to the rank table (RANKS in %s)"
                            % (header, os.path.basename(__file__)))
        for line, target in graph[header]:
            if target not in graph:
                problems.append("%s:%d: includes %s, which does not exist" % (header, line, target))
                continue
            trank, tentry = rank_of(target[len("fastnn/"):])
            if rank is not None and trank is not None and trank > rank:
                problems.append("%s:%d: upward include of %s (rank %d, '%s') from rank %d ('%s')"
                                % (header, line, target, trank, tentry, rank, entry))

    for cyc in find_cycles(graph):
        problems.append("include cycle: %s" % " -> ".join(cyc))
    return len(graph), n_includes, problems


# ---- self-test ------------------------------------------------------------------------------
def self_test():
    """Builds fake header trees and asserts that each kind of problem is found, and that a
    clean tree passes. Returns the exit status."""
    clean = {
        "config.hpp": "",
        "core/a.hpp": '#include "fastnn/config.hpp"\n',
        "core/b.hpp": '#include "fastnn/core/a.hpp"\n// #include "fastnn/model/m.hpp"  (a comment)\n'
                      '/* #include "fastnn/io/x.hpp"\n   still a comment */\n',
        "backend/cuda/k.cuh": '#include "fastnn/core/b.hpp"\n',
        "layers/l.hpp": '#include "fastnn/backend/cuda/k.cuh"\n#include "fastnn/layers/l2.hpp"\n',
        "layers/l2.hpp": '#include <vector>\n#include "fastnn/core/a.hpp"\n',
        "model/m.hpp": '#include "fastnn/layers/l.hpp"\n',
        "fastnn.hpp": '#include "fastnn/model/m.hpp"\n#include "fastnn/core/b.hpp"\n',
    }
    cases = [
        ("a clean tree", {}, []),
        ("an include cycle",
         {"core/c1.hpp": '#include "fastnn/core/c2.hpp"\n',
          "core/c2.hpp": '#include "fastnn/core/c3.hpp"\n',
          "core/c3.hpp": '#include "fastnn/core/c1.hpp"\n'},
         ["include cycle: fastnn/core/c1.hpp -> fastnn/core/c2.hpp -> fastnn/core/c3.hpp -> fastnn/core/c1.hpp"]),
        ("an upward include",
         {"backend/cuda/up.hpp": '#include "fastnn/core/a.hpp"\n#include "fastnn/model/m.hpp"\n'},
         ["fastnn/backend/cuda/up.hpp:2: upward include of fastnn/model/m.hpp (rank 4, 'model/') "
          "from rank 1 ('backend/cuda/')"]),
        ("a header outside the rank table",
         {"misc/stray.hpp": '#include "fastnn/core/a.hpp"\n'},
         ["fastnn/misc/stray.hpp: matches no entry of the rank table"]),
        ("an include of a missing header",
         {"core/d.hpp": '#include "fastnn/core/gone.hpp"\n'},
         ["fastnn/core/d.hpp:1: includes fastnn/core/gone.hpp, which does not exist"]),
        ("a fastnn header included with <> and one by a relative path",
         {"core/e.hpp": '#include <fastnn/core/a.hpp>\n#include "a.hpp"\n'},
         ["fastnn/core/e.hpp:1: includes <fastnn/core/a.hpp>", 'fastnn/core/e.hpp:2: includes "a.hpp"']),
    ]
    failures = 0
    for title, extra, expected in cases:
        with tempfile.TemporaryDirectory(prefix="fastnn-layering-") as tmp:
            for rel, text in list(clean.items()) + list(extra.items()):
                path = os.path.join(tmp, "fastnn", rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
            _, _, problems = check(tmp)
        # Exactly the expected problems, each found by the start of its message.
        ok = len(problems) == len(expected) and all(any(p.startswith(e) for p in problems) for e in expected)
        print("self-test: %-60s %s" % (title, "ok" if ok else "FAILED"))
        if not ok:
            failures += 1
            print("  expected: %s" % expected)
            print("  got:      %s" % problems)
    print("header_layering self-test: %d of %d cases passed" % (len(cases) - failures, len(cases)))
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--include-dir", help="the directory that holds fastnn/ (the project's include/)")
    ap.add_argument("--self-test", action="store_true", help="check the checker on fake headers")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if not args.include_dir:
        ap.error("--include-dir is required (or --self-test)")
    n_headers, n_includes, problems = check(args.include_dir)
    for p in problems:
        print(p)
    print("header_layering: %d headers, %d includes, %d problems" % (n_headers, n_includes, len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
