"""Mutation testing of the core math: does the fast test suite notice a small plausible bug?

A mutant is the library with one expression changed (``a + b`` → ``a - b``, ``<`` → ``<=``, a number
nudged, ``and`` → ``or``, a unary minus dropped, ...; the operators are listed in ``MUTATIONS``). Each
mutant is written into a scratch copy of the repository and the fast tests that import the mutated
module run against it (``pytest -x -m "not slow"``); a mutant is *killed* when they fail or time out and
*survives* when they pass. The score is killed / (killed + survived).

Usage (from the repository root; ``--jobs 2`` runs two mutants at once, each in its own copy):

    .venv/bin/python benchmarks/mutation/run.py                       # every target module
    .venv/bin/python benchmarks/mutation/run.py masf/metrics.py       # some modules
    .venv/bin/python benchmarks/mutation/run.py --sample 200 --seed 0 # a uniform random sample of mutants

It writes ``benchmarks/mutation/results.json`` (one record per mutant) and ``report.md`` (the score per
module and every survivor with its line), merging with the records already there so that runs over
different modules add up. ``equivalent.json`` lists survivors judged equivalent (same behaviour), with
the reason; they are reported but left out of the score.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TARGETS = ("masf/filters", "masf/diffusion", "masf/metrics.py", "masf/operators")

BINOPS = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.MatMult: ast.Mult,
}
COMPARES = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
MUTATIONS = (
    "binop: + ↔ −, * ↔ /, // → *, % → //, ** → *, @ → *",
    "compare: < ↔ <=, > ↔ >=, == ↔ !=, is ↔ is not, in ↔ not in",
    "boolop: and ↔ or",
    "unary: −x → x, not x → x",
    "number: an int n → n + 1, a float c → 2c (0.0 → 1.0)",
    "bool constant: True ↔ False",
)


@dataclass
class Mutant:
    module: str
    line: int
    col: int
    kind: str
    original: str
    mutated: str
    status: str = "pending"  # killed | survived | timeout | error
    seconds: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.module}:{self.line}:{self.col}:{self.kind}:{self.mutated}"


def _docstring_nodes(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _skipped_spans(tree: ast.AST) -> list[tuple[int, int]]:
    """Line spans not mutated: type annotations, error messages, ``__all__`` and other module constants
    that are tuples of names (mutating those only changes wording)."""
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise | ast.Assert) or (
            isinstance(node, ast.Call) and getattr(node.func, "attr", "") in {"warn", "info", "debug"}
        ):
            spans.append((node.lineno, node.end_lineno or node.lineno))
        if isinstance(node, ast.AnnAssign | ast.arg) and node.annotation is not None:
            ann = node.annotation
            spans.append((ann.lineno, ann.end_lineno or ann.lineno))
        if isinstance(node, ast.FunctionDef) and node.returns is not None:
            spans.append((node.returns.lineno, node.returns.end_lineno or node.returns.lineno))
    return spans


def _variants(node: ast.AST) -> list[tuple[str, ast.AST]]:
    """(kind, mutated copy of ``node``) for every mutation that applies to this node itself."""
    out: list[tuple[str, ast.AST]] = []

    def copy() -> ast.AST:
        return ast.parse(ast.unparse(node), mode="eval").body

    if isinstance(node, ast.BinOp) and type(node.op) in BINOPS:
        new = copy()
        new.op = BINOPS[type(node.op)]()
        out.append(("binop", new))
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in COMPARES:
        new = copy()
        new.ops = [COMPARES[type(node.ops[0])]()]
        out.append(("compare", new))
    elif isinstance(node, ast.BoolOp):
        new = copy()
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        out.append(("boolop", new))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
        out.append(("unary", ast.parse(ast.unparse(node.operand), mode="eval").body))
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
        if isinstance(node.value, bool):
            out.append(("bool", ast.Constant(not node.value)))
        elif isinstance(node.value, int):
            out.append(("number", ast.Constant(node.value + 1)))
        else:
            out.append(("number", ast.Constant(2 * node.value if node.value != 0 else 1.0)))
    return out


def mutants_of(path: Path) -> list[Mutant]:
    """Every mutant of one module, in source order."""
    source = path.read_text()
    tree = ast.parse(source)
    docstrings = _docstring_nodes(tree)
    skipped = _skipped_spans(tree)
    in_fstring = {id(n) for f in ast.walk(tree) if isinstance(f, ast.JoinedStr) for n in ast.walk(f)}
    module = str(path.relative_to(REPO))
    found = []
    for node in ast.walk(tree):
        if not hasattr(node, "lineno") or id(node) in docstrings:
            continue
        if id(node) in in_fstring or any(a <= node.lineno <= b for a, b in skipped):
            continue
        original = ast.get_source_segment(source, node)
        if original is None:
            continue
        for kind, new in _variants(node):
            mutated = ast.unparse(new)
            if kind in {"binop", "compare", "boolop", "unary"}:
                mutated = f"({mutated})"
            found.append(Mutant(module, node.lineno, node.col_offset, kind, original, mutated))
    found.sort(key=lambda m: (m.line, m.col, m.kind, m.mutated))
    return found


def apply(source: str, mutant: Mutant) -> str:
    """The module's source with the mutant's span replaced (the span is found from its line/col)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) == mutant.line and getattr(node, "col_offset", None) == mutant.col:
            if ast.get_source_segment(source, node) != mutant.original:
                continue
            lines = source.splitlines(keepends=True)
            start = sum(len(x) for x in lines[: node.lineno - 1]) + _byte_to_char(
                lines[node.lineno - 1], node.col_offset
            )
            end_line = lines[node.end_lineno - 1]
            end = sum(len(x) for x in lines[: node.end_lineno - 1]) + _byte_to_char(
                end_line, node.end_col_offset
            )
            return source[:start] + mutant.mutated + source[end:]
    raise LookupError(f"mutant {mutant.key} not found in the source")


def _byte_to_char(line: str, offset: int) -> int:
    return len(line.encode()[:offset].decode())


def _dotted(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


@functools.cache
def _imports() -> dict[str, set[str]]:
    """For every module of ``masf``, the ``masf`` modules it imports (``from masf.x import y`` counts
    ``masf.x`` and, when it exists, ``masf.x.y``)."""
    modules = {_dotted(p) for p in (REPO / "masf").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in (REPO / "masf").rglob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[_dotted(path)] = found & modules
    return graph


def _dependents(dotted: str) -> set[str]:
    """``dotted`` and every ``masf`` module that imports it, directly or through others."""
    graph, seen, todo = _imports(), {dotted}, [dotted]
    while todo:
        current = todo.pop()
        for name, deps in graph.items():
            if current in deps and name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def _patterns(dotted: str) -> list[str]:
    package, _, leaf = dotted.rpartition(".")
    patterns = [rf"\b{re.escape(dotted)}\b", rf"from {re.escape(package)} import [^\n]*\b{leaf}\b"]
    if (REPO / dotted.replace(".", "/") / "__init__.py").exists():
        patterns.append(rf"from {re.escape(dotted)} import")
    if package in {"masf.filters", "masf.operators", "masf.diffusion"}:
        patterns.append(rf"from {re.escape(package)} import")
    return patterns


@functools.cache
def tests_for(module: str) -> tuple[str, ...]:
    """The test files that import the module or any ``masf`` module that imports it (transitively): by
    dotted name, by ``from package import leaf``, or, inside ``masf.filters`` / ``masf.operators`` /
    ``masf.diffusion``, any import from the package (their ``make_filter`` / ``make_operator`` /
    ``sample`` reach every member)."""
    dotted = module.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
    leaf = dotted.rpartition(".")[2]
    patterns = [p for name in sorted(_dependents(dotted)) for p in _patterns(name)]
    chosen = [
        t for t in (REPO / "tests").glob("test_*.py") if any(re.search(p, t.read_text()) for p in patterns)
    ]
    # the module's own tests first (a mutant is usually killed there, and -x stops), then small files first
    chosen.sort(key=lambda t: (leaf.removeprefix("_") not in t.stem, t.stat().st_size, t.name))
    return tuple(str(t.relative_to(REPO)) for t in chosen)


def run_tests(root: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-m", "not slow", "-p", "no:cacheprovider",
               "-p", "no:xdist", "--timeout", str(int(timeout)), *tests]  # fmt: skip
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout + 30
        )
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start
    seconds = time.perf_counter() - start
    if done.returncode == 0:
        return "survived", seconds
    if done.returncode == 1 or "Timeout" in done.stdout:
        return "killed", seconds
    return "error", seconds  # collection errors, crashes: the mutant broke the import


def scratch_copy() -> Path:
    root = Path(tempfile.mkdtemp(prefix="masf-mutation-"))
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    for name in tracked.stdout.splitlines():  # the working tree's tracked files, benchmarks' data aside
        src = REPO / name
        if name.startswith("benchmarks/") or not src.is_file():
            continue
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, root / name)
    check = subprocess.run([sys.executable, "-c", "import masf; print(masf.__file__)"], cwd=root,
                           env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True)  # fmt: skip
    if not check.stdout.strip().startswith(str(root)):
        raise SystemExit(f"the scratch copy's masf is not the one imported ({check.stdout.strip()})")
    return root


def load(path: Path) -> dict[str, dict]:
    return {r["key"]: r for r in json.loads(path.read_text())} if path.exists() else {}


def write_report(records: dict[str, dict], equivalent: dict[str, str], population: int) -> None:
    by_module: dict[str, list[dict]] = {}
    for r in records.values():
        by_module.setdefault(r["module"], []).append(r)
    lines = ["# Mutation report", "", f"Mutations: {'; '.join(MUTATIONS)}.", "",
             "Command: `.venv/bin/python benchmarks/mutation/run.py [modules] [--sample K --seed S]`; "
             "the fast tests (`-m \"not slow\"`) that import each module are run against each mutant.", "",
             "| module | mutants | killed | survived | equivalent | score |", "|---|---|---|---|---|---|"]  # fmt: skip
    total = {"n": 0, "killed": 0, "survived": 0, "equivalent": 0}
    for module in sorted(by_module):
        rs = by_module[module]
        eq = sum(1 for r in rs if r["status"] == "survived" and r["key"] in equivalent)
        killed = sum(1 for r in rs if r["status"] in {"killed", "timeout", "error"})
        survived = sum(1 for r in rs if r["status"] == "survived") - eq
        score = killed / max(killed + survived, 1)
        lines.append(f"| `{module}` | {len(rs)} | {killed} | {survived} | {eq} | {100 * score:.1f} % |")
        for k, v in (("n", len(rs)), ("killed", killed), ("survived", survived), ("equivalent", eq)):
            total[k] += v
    score = total["killed"] / max(total["killed"] + total["survived"], 1)
    lines.append(f"| **all** | {total['n']} | {total['killed']} | {total['survived']} | {total['equivalent']} "
                 f"| **{100 * score:.1f} %** |")  # fmt: skip
    n = total["killed"] + total["survived"]
    if n:
        low, high = wilson(total["killed"], n)
        lines += ["", f"{total['n']} of the {population} mutants of the modules run here have a result; the score's 95 % "
                  f"(Wilson) interval for all of them is [{100 * low:.1f} %, {100 * high:.1f} %]."]  # fmt: skip
    lines += ["", "## Survivors", "", "| module:line | original → mutated | note |", "|---|---|---|"]
    for r in sorted(records.values(), key=lambda r: (r["module"], r["line"], r["col"])):
        if r["status"] == "survived":
            note = equivalent.get(r["key"], "not yet killed")
            lines.append(
                f"| `{r['module']}:{r['line']}` | `{r['original'][:60]}` → `{r['mutated'][:60]}` | {note} |"
            )
    (HERE / "report.md").write_text("\n".join(lines) + "\n")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion k/n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="module files (default: every target under masf/)")
    parser.add_argument("--sample", type=int, default=0, help="run a uniform random sample of K mutants")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (each in its own copy)")
    parser.add_argument("--list", action="store_true", help="only count the mutants per module")
    parser.add_argument("--rerun", action="store_true", help="run mutants that already have a result again")
    parser.add_argument(
        "--survivors", action="store_true", help="run the recorded survivors again (after new tests)"
    )
    parser.add_argument("--report", action="store_true", help="only rewrite report.md from results.json")
    parser.add_argument(
        "--check", action="store_true", help="only check that every mutant applies and compiles"
    )
    args = parser.parse_args(argv)

    paths = [REPO / m for m in args.modules] if args.modules else []
    if not paths:
        for target in TARGETS:
            t = REPO / target
            paths += sorted(t.glob("*.py")) if t.is_dir() else [t]
    mutants = [m for p in paths for m in mutants_of(p)]
    if args.list:
        for p in paths:
            module = str(p.relative_to(REPO))
            print(
                f"{module}: {sum(1 for m in mutants if m.module == module)} mutants, tests {tests_for(module)}"
            )
        print(f"total {len(mutants)}")
        return 0
    if args.check:
        for m in mutants:
            compile(apply((REPO / m.module).read_text(), m), m.module, "exec")
        print(f"{len(mutants)} mutants apply and compile")
        return 0
    population = len(mutants)
    if args.sample:
        mutants = sorted(
            random.Random(args.seed).sample(mutants, min(args.sample, len(mutants))), key=lambda m: m.key
        )

    results_path = HERE / "results.json"
    records = load(results_path)
    equivalent = {k: v["reason"] for k, v in load(HERE / "equivalent.json").items()}
    if args.report:
        write_report(records, equivalent, population)
        return 0
    if args.survivors:
        mutants = [
            m
            for m in mutants
            if records.get(m.key, {}).get("status") == "survived" and m.key not in equivalent
        ]
    todo = [m for m in mutants if args.rerun or args.survivors or m.key not in records]
    random.Random(args.seed).shuffle(todo)  # any prefix of the run is itself a uniform sample
    total = len(todo)
    lock = threading.Lock()
    baseline: dict[str, float] = {}
    done_count = [0]

    def save() -> None:
        results_path.write_text(json.dumps(sorted(records.values(), key=lambda r: r["key"]), indent=1))
        write_report(records, equivalent, population)

    def worker(queue: list[Mutant]) -> None:
        root = scratch_copy()
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    mutant = queue.pop(0)
                tests = tests_for(mutant.module)
                if not tests:
                    mutant.status = "survived"
                else:
                    key = " ".join(tests)
                    with lock:
                        known = baseline.get(key)
                    if known is None:
                        status, known = run_tests(root, tests, timeout=1200)
                        if status != "survived":  # a red suite would "kill" every mutant: stop
                            print(f"the unmutated tests do not pass for {mutant.module} ({status}): stopping")
                            with lock:
                                queue.clear()
                            return
                        with lock:
                            baseline[key] = known
                    target = root / mutant.module
                    original = target.read_text()
                    target.write_text(apply(original, mutant))
                    try:
                        mutant.status, mutant.seconds = run_tests(root, tests, timeout=max(60.0, 3 * known))
                    finally:
                        target.write_text(original)
                with lock:
                    records[mutant.key] = {"key": mutant.key, **asdict(mutant)}
                    done_count[0] += 1
                    print(f"[{done_count[0]}/{total}] {mutant.status:8s} {mutant.module}:{mutant.line} "
                          f"{mutant.original[:40]!r} -> {mutant.mutated[:40]!r} ({mutant.seconds:.0f} s)", flush=True)  # fmt: skip
                    save()  # after every mutant: a killed run loses nothing
        finally:
            shutil.rmtree(root, ignore_errors=True)

    threads = [threading.Thread(target=worker, args=(todo,)) for _ in range(max(1, args.jobs))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        with lock:
            save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
