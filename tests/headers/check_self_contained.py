#!/usr/bin/env python3
"""Checks that every public fastnn header compiles on its own and instantiates its main template.

For each header under <include-dir>/fastnn one translation unit is generated in the work
directory:

    #include <fastnn/HEADER>
    <the header's lines from instantiate.txt>

and compiled alone. The lines normally are explicit instantiations
(`template class fastnn::Dense<float, fastnn::Cpu>;`), which make the compiler instantiate every
member function of the class, so a header that forgets an include its templates need (an
incomplete `Ops<float, Cpu>`, say) fails here even though it compiles inside fastnn.hpp.

Two sets of headers:
  * CPU (default): every header except those under backend/cuda/, layers/cuda/, model/cuda/
    and the umbrella cuda.hpp, compiled with
        $CXX -std=c++17 -fsyntax-only -Wall -Wextra -Wpedantic -Werror -I<include> -I<eigen> ...
    (g++ -fsyntax-only still instantiates explicit instantiations; --self-test proves it);
  * CUDA (--cuda): exactly those headers, compiled by nvcc as .cu files with
        nvcc -x cu -std=c++17 -c -o /dev/null -arch=sm_90 -Xcompiler=-Wall,-Wextra
             -DFASTNN_WITH_CUDA=1 -I<include> -I<eigen> -I<cudnn> ...

The table instantiate.txt must name every header (of both sets: a missing CUDA entry is caught
by the CPU run too) and nothing else. Exit status 1 on any failure; each failing header is
printed with the compiler's first error lines, and the full log stays in the work directory.
Each table line is preceded by a #line directive, so an error in the line itself is reported
at instantiate.txt:N.

    check_self_contained.py --include-dir include [-I DIR ...] [--cxx g++] [--jobs N]
    check_self_contained.py --cuda --include-dir include --nvcc nvcc -I DIR ...
    check_self_contained.py --self-test     proves on fake headers that a template member with
                                            an error, a missing include, a warning, a missing
                                            and a stale table entry all fail the check
"""

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import time
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TABLE = os.path.join(HERE, "instantiate.txt")
HEADER_SUFFIXES = (".hpp", ".cuh")

# Headers that need the CUDA toolkit and cuDNN: compiled only with --cuda (paths relative to
# include/fastnn; an entry ending in "/" is a directory).
CUDA_PATHS = ("backend/cuda/", "layers/cuda/", "model/cuda/", "distributed/cuda/", "cuda.hpp")

# Generated translation units and their logs are named with this prefix; only such files are
# removed from the work directory.
TU_PREFIX = "selfcontained_"


def is_cuda_header(rel):
    return any(rel.startswith(p) if p.endswith("/") else rel == p for p in CUDA_PATHS)


def list_headers(include_dir):
    """Every header under include_dir/fastnn, as paths relative to include_dir/fastnn."""
    root = os.path.join(include_dir, "fastnn")
    out = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name.endswith(HEADER_SUFFIXES):
                out.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(out)


def read_table(path):
    """Parses instantiate.txt: {header: [(line number, code)]} and [problems].

    Each non-blank line that does not start with '#' is `header/path.hpp: <C++ line>`; the
    path is relative to include/fastnn and ends at the first ':'."""
    table, problems = {}, []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            header, sep, code = line.partition(":")
            header, code = header.strip(), code.strip()
            if not sep or not header.endswith(HEADER_SUFFIXES) or not code:
                problems.append("%s:%d: not of the form 'path/to/header.hpp: <C++ code line>': %s"
                                % (path, n, line))
                continue
            table.setdefault(header, []).append((n, code))
    return table, problems


def strip_comments(text):
    """The text with its // and /* */ comments and string literals blanked out."""
    return re.sub(r'"(?:\\.|[^"\\\n])*"|/\*.*?\*/|//[^\n]*', lambda m: re.sub(r"[^\n]", " ", m.group(0)),
                  text, flags=re.DOTALL)


def suggest(include_dir, rel, device):
    """A likely table line for a header missing from the table: an explicit instantiation of its
    first primary class template outside namespace detail, else a sizeof of its first class,
    else a placeholder."""
    try:
        with open(os.path.join(include_dir, "fastnn", rel), encoding="utf-8", errors="replace") as f:
            text = strip_comments(f.read())
    except OSError:
        text = ""
    # Walks the braces, keeping the stack of enclosing namespaces ("" for any other brace).
    token = re.compile(r"namespace\s+(\w+)\s*\{"
                       r"|(template\s*<([^<>]*)>\s*)?\b(?:class|struct)\s+(\w+)\s*(?:final\s*)?(?::[^{;]*)?\{"
                       r"|[{}]")
    stack, first_class = [], None
    for m in token.finditer(text):
        if m.group(4):  # a class (a specialisation has '<' after its name and is not matched)
            if "detail" not in stack:
                ns = "::".join(n for n in stack if n) or "fastnn"
                if m.group(2):
                    params = [p.strip() for p in m.group(3).split(",") if p.strip()]
                    n_params = len(params)
                    if n_params in (1, 2) and all(re.match(r"(class|typename)\b", p) for p in params):
                        args = "float" if n_params == 1 else "float, fastnn::" + device
                        return "template class %s::%s<%s>;" % (ns, m.group(4), args)
                elif first_class is None and stack and all(stack):  # at namespace scope
                    first_class = "%s::%s" % (ns, m.group(4))
            stack.append("")  # its body
        elif m.group(1):
            stack.append(m.group(1))
        elif m.group(0) == "{":
            stack.append("")
        elif stack:
            stack.pop()
    if first_class:
        return "static_assert(sizeof(%s) > 0);" % first_class
    return "static_assert(sizeof(fastnn::SomeTypeOfTheHeader) > 0);"


def check_table(table, table_problems, headers, include_dir, table_name):
    """Problems of the table against the headers that exist: missing and stale entries."""
    problems = list(table_problems)
    existing = set(headers)
    for rel in headers:
        if rel not in table:
            device = "Cuda" if is_cuda_header(rel) else "Cpu"
            problems.append('fastnn/%s: not in %s: add a line such as "%s: %s"'
                            % (rel, table_name, rel, suggest(include_dir, rel, device)))
    for rel in sorted(table):
        if rel not in existing:
            problems.append("%s:%d: fastnn/%s does not exist: remove its lines (or change them to "
                            "the header's new path)" % (table_name, table[rel][0][0], rel))
    return problems


def tu_base(work_dir, rel):
    """The generated translation unit of a header, without its extension (.cpp, .cu or .log)."""
    return os.path.join(work_dir, TU_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", rel))


def write_tu(work_dir, rel, lines, cuda, table_name):
    """Writes the header's translation unit. A #line before each table line makes the
    compiler's messages about it point into the table (instantiate.txt:N)."""
    path = tu_base(work_dir, rel) + (".cu" if cuda else ".cpp")
    quoted = table_name.replace("\\", "\\\\").replace('"', '\\"')
    with open(path, "w") as f:
        f.write("// Generated by tests/headers/check_self_contained.py: fastnn/%s alone, then its\n"
                "// lines from tests/headers/instantiate.txt.\n" % rel)
        f.write("#include <fastnn/%s>\n" % rel)
        for n, code in lines:
            f.write('#line %d "%s"\n%s\n' % (n, quoted, code))
    return path


# The compilers' own system directories: CMake's transitive include lists name them, but -I for
# them would only reorder the system headers (g++ ignores it), so they are left out.
SYSTEM_INCLUDE_DIRS = ("/usr/include", "/usr/local/include")


def include_dirs(args):
    """fastnn's include directory, then the extra ones, without duplicates or system directories."""
    out = []
    for d in [args.include_dir] + (args.include or []):
        d = os.path.normpath(d)
        if d not in out and d not in SYSTEM_INCLUDE_DIRS:
            out.append(d)
    return out


def compile_command(args, tu):
    includes = include_dirs(args)
    if args.cuda:
        cmd = [args.nvcc, "-x", "cu", "-std=c++17", "-c", "-o", os.devnull, "-arch=" + args.cuda_arch,
               "-Xcompiler=-Wall,-Wextra", "-DFASTNN_WITH_CUDA=1"]
        if args.ccbin:
            cmd.append("-ccbin=" + args.ccbin)
    else:
        cmd = [args.cxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Wpedantic", "-Werror"]
    return cmd + ["-I" + d for d in includes] + [tu]


def compile_one(args, rel, lines):
    """Compiles one header's translation unit. Returns (rel, ok, output)."""
    tu = write_tu(args.work_dir, rel, lines, args.cuda, args.table_name)
    cmd = compile_command(args, tu)
    start = time.monotonic()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=args.timeout,
                           universal_newlines=True, errors="replace")
        ok, out = p.returncode == 0, p.stdout
    except subprocess.TimeoutExpired:
        ok, out = False, "error: the compiler ran longer than %d s\n" % args.timeout
    except OSError as e:
        ok, out = False, "error: cannot run %s: %s\n" % (cmd[0], e)
    with open(tu_base(args.work_dir, rel) + ".log", "w") as f:
        f.write(" ".join(cmd) + "\n" + out)
    if args.verbose:
        print("%6.1f s  fastnn/%s" % (time.monotonic() - start, rel), flush=True)
    return rel, ok, out


def first_errors(out, dirs, n):
    """The first n error lines of a compiler's output (with the given directories cut from the
    paths), and how many there were."""
    errs = [l for l in out.splitlines() if re.search(r"\berror\b", l)]
    for d in dirs:
        errs = [l.replace(os.path.abspath(d) + os.sep, "") for l in errs]
    return errs[:n], len(errs)


def run(args):
    """The check. Returns (exit status, {header: ok}, [table problems]) for the self-test."""
    kind = "cuda" if args.cuda else "cpu"
    headers = list_headers(args.include_dir)
    if not headers:
        print("header_self_contained (%s): no headers under %s/fastnn" % (kind, args.include_dir))
        return 1, {}, []
    table, table_problems = read_table(args.table)
    args.table_name = args.table_name or args.table
    problems = check_table(table, table_problems, headers, args.include_dir, args.table_name)
    selected = [h for h in headers if is_cuda_header(h) == args.cuda and h not in (getattr(args, "skip", None) or [])]
    for h in getattr(args, "skip", None) or []:
        print("skip fastnn/%s (its library was not found by this build)" % h)

    os.makedirs(args.work_dir, exist_ok=True)
    for name in os.listdir(args.work_dir):
        if name.startswith(TU_PREFIX):
            os.remove(os.path.join(args.work_dir, name))

    results = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(compile_one, args, rel, table.get(rel, [])) for rel in selected]
        for fut in concurrent.futures.as_completed(futures):
            rel, ok, out = fut.result()
            results[rel] = (ok, out)

    failed = 0
    for rel in selected:
        ok, out = results[rel]
        if args.verbose or not ok:
            print("%s fastnn/%s" % ("ok  " if ok else "FAIL", rel))
        if not ok:
            failed += 1
            errs, total = first_errors(out, [args.include_dir, args.work_dir], args.error_lines)
            for l in errs or out.splitlines()[:args.error_lines]:
                print("      " + l)
            more = " (%d more error lines)" % (total - len(errs)) if total > len(errs) else ""
            print("      full log: %s.log%s" % (tu_base(args.work_dir, rel), more))
    for p in problems:
        print(p)
    print("header_self_contained (%s): %d headers, %d compile alone, %d fail, %d table problems"
          % (kind, len(selected), len(selected) - failed, failed, len(problems)))
    status = 1 if failed or problems else 0
    return status, {rel: results[rel][0] for rel in selected}, problems


# ---- self-test ------------------------------------------------------------------------------
SELF_TEST_HEADERS = {
    # Compiles alone, instantiated in full.
    "core/good.hpp": "#pragma once\n#include <vector>\nnamespace fastnn {\n"
                     "template <class T, class D> struct Good {\n  std::vector<T> v;\n"
                     "  T sum() const { T s{}; for (T x : v) s += x; return s; }\n};\nstruct Cpu {};\n}\n",
    # The class itself is fine; one member function only fails when instantiated.
    "core/broken_member.hpp": "#pragma once\nnamespace fastnn {\n"
                              "template <class T, class D> struct Broken {\n  int size() const { return 1; }\n"
                              "  void bad() { this->no_such_member(); }\n};\nstruct Cpu {};\n}\n",
    # The same broken template, but the table only asks for sizeof: member bodies are not
    # instantiated, so it passes. (Shows that the explicit instantiation is what catches it.)
    "core/broken_member_sizeof.hpp": "#pragma once\nnamespace fastnn {\n"
                                     "template <class T> struct Broken2 {\n"
                                     "  void bad() { this->no_such_member(); }\n};\n}\n",
    # Uses std::vector without including <vector>.
    "core/missing_include.hpp": "#pragma once\nnamespace fastnn {\ninline int n() { std::vector<int> v; "
                                "return static_cast<int>(v.size()); }\n}\n",
    # A warning (unused variable) is an error for the CPU compile (-Werror).
    "core/warning.hpp": "#pragma once\nnamespace fastnn {\ninline int w() { int unused = 0; return 1; }\n}\n",
    # Not in the table.
    "core/untabled.hpp": "#pragma once\nnamespace fastnn {\ntemplate <class T, class D> class Untabled {};\n}\n",
    # A CUDA-set header: never compiled by the CPU run, but its table entry is required.
    "backend/cuda/dev.hpp": "#pragma once\nnamespace fastnn {\ntemplate <class T, class D> struct Dev {};\n"
                            "struct Cuda {};\n}\n",
    # A CUDA-set header with a broken member: nvcc must fail it too.
    "backend/cuda/dev_broken.hpp": "#pragma once\nnamespace fastnn {\ntemplate <class T, class D> struct DevBroken {\n"
                                   "  void bad() { this->no_such_member(); }\n};\nstruct Cuda {};\n}\n",
}
SELF_TEST_TABLE = """\
# a comment, then the entries
core/good.hpp: template struct fastnn::Good<float, fastnn::Cpu>;
core/good.hpp: static_assert(sizeof(fastnn::Good<double, fastnn::Cpu>) > 0);
core/broken_member.hpp: template struct fastnn::Broken<float, fastnn::Cpu>;
core/broken_member_sizeof.hpp: static_assert(sizeof(fastnn::Broken2<float>) > 0);
core/missing_include.hpp: static_assert(sizeof(int) > 0);
core/warning.hpp: static_assert(sizeof(int) > 0);
backend/cuda/dev.hpp: template struct fastnn::Dev<float, fastnn::Cuda>;
backend/cuda/dev_broken.hpp: template struct fastnn::DevBroken<float, fastnn::Cuda>;
core/gone.hpp: static_assert(sizeof(int) > 0);
"""


def self_test(args):
    """Runs the check on SELF_TEST_HEADERS and asserts which headers pass, which fail and
    which table problems are reported. Returns the exit status."""
    with tempfile.TemporaryDirectory(prefix="fastnn-selfcontained-") as tmp:
        inc = os.path.join(tmp, "include")
        for rel, text in SELF_TEST_HEADERS.items():
            path = os.path.join(inc, "fastnn", rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        table = os.path.join(tmp, "instantiate.txt")
        with open(table, "w") as f:
            f.write(SELF_TEST_TABLE)
        sub = argparse.Namespace(**vars(args))
        sub.include_dir, sub.table, sub.table_name, sub.work_dir = inc, table, "instantiate.txt", os.path.join(tmp, "work")
        sub.include, sub.verbose = [], True
        print("---- the check on fake headers (failures expected) ----")
        status, ok, problems = run(sub)
        print("---- assertions ----")

    expected_ok = {"core/good.hpp": True, "core/broken_member.hpp": False, "core/broken_member_sizeof.hpp": True,
                   "core/missing_include.hpp": False, "core/untabled.hpp": True}
    if not args.cuda:
        expected_ok["core/warning.hpp"] = False
    else:  # nvcc: only the CUDA-set header is compiled
        expected_ok = {"backend/cuda/dev.hpp": True, "backend/cuda/dev_broken.hpp": False}
    checks = [("exit status 1", status == 1)]
    for rel, want in sorted(expected_ok.items()):
        checks.append(("fastnn/%s %s" % (rel, "compiles" if want else "fails"), ok.get(rel) == want))
    checks.append(("only the %s set is compiled" % ("CUDA" if args.cuda else "CPU"), set(ok) == set(expected_ok)))
    checks.append(("missing entry for core/untabled.hpp reported",
                   any(p.startswith("fastnn/core/untabled.hpp: not in instantiate.txt") and
                       '"core/untabled.hpp: template class fastnn::Untabled<float, fastnn::Cpu>;"' in p
                       for p in problems)))
    checks.append(("stale entry for core/gone.hpp reported",
                   any(p.startswith("instantiate.txt:10: fastnn/core/gone.hpp does not exist") for p in problems)))
    checks.append(("no other table problems", len(problems) == 2))
    failures = 0
    for title, good in checks:
        print("self-test: %-60s %s" % (title, "ok" if good else "FAILED"))
        failures += 0 if good else 1
    print("header_self_contained self-test (%s): %d of %d assertions passed"
          % ("cuda" if args.cuda else "cpu", len(checks) - failures, len(checks)))
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--include-dir", help="the directory that holds fastnn/ (the project's include/)")
    ap.add_argument("-I", "--include", action="append", metavar="DIR",
                    help="another include directory (Eigen, cuDNN, ...); repeatable. "
                         "Default: /usr/include/eigen3 when none is given")
    ap.add_argument("--table", default=DEFAULT_TABLE, help="the instantiation table (default: %(default)s)")
    ap.add_argument("--work-dir", help="where the translation units and logs go (default: a temporary directory)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles (default: %(default)s)")
    ap.add_argument("--cxx", default=os.environ.get("CXX") or "g++", help="C++ compiler (default: $CXX or g++)")
    ap.add_argument("--cuda", action="store_true", help="check the CUDA headers with nvcc instead")
    ap.add_argument("--nvcc", default="nvcc", help="nvcc for --cuda (default: %(default)s)")
    ap.add_argument("--ccbin", help="host compiler for nvcc (-ccbin)")
    ap.add_argument("--cuda-arch", default="sm_90", help="GPU architecture for nvcc (default: %(default)s)")
    ap.add_argument("--skip", action="append", metavar="HEADER",
                    help="a header (relative to include/fastnn) whose optional library this build lacks (MPI, NCCL)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per compile (default: %(default)s)")
    ap.add_argument("--error-lines", type=int, default=6, help="error lines shown per failing header")
    ap.add_argument("--verbose", action="store_true", help="also list the headers that pass")
    ap.add_argument("--self-test", action="store_true", help="check the checker on fake headers")
    args = ap.parse_args()
    args.table_name = None
    if args.include is None:
        args.include = ["/usr/include/eigen3"]
    if args.self_test:
        return self_test(args)
    if not args.include_dir:
        ap.error("--include-dir is required (or --self-test)")
    args.include_dir = os.path.abspath(args.include_dir)
    # Table paths in messages relative to the project root when the table lies inside it.
    root = os.path.dirname(args.include_dir)
    table_abs = os.path.abspath(args.table)
    if table_abs.startswith(root + os.sep):
        args.table_name = os.path.relpath(table_abs, root)
    if args.work_dir:
        return run(args)[0]
    with tempfile.TemporaryDirectory(prefix="fastnn-selfcontained-") as tmp:
        args.work_dir = tmp
        status = run(args)[0]
        if status:
            print("(the logs were in a temporary directory; pass --work-dir to keep them)")
        return status


if __name__ == "__main__":
    sys.exit(main())
