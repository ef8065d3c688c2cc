"""scripts/mutants: break each security check on purpose and see that a test notices.

For every mutant in tests/mutation/mutants.py, one at a time, in a scratch copy of this tree
(the checkout itself is never modified): replace the mutant's OLD code by its NEW code, run the
mutant's tests, put the code back. A mutant is killed when its tests fail. Before any mutant, the
same tests run on the unmodified copy and must pass (else a "kill" would prove nothing).

Prints one line per mutant (id, file, killed/survived/stale/error, seconds) and exits 1 if any
mutant survived, no longer applies (stale: its OLD code does not occur exactly once in its file),
or could not be run; 0 when every mutant was killed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

from tests.mutation.mutants import MUTANTS, Mutant

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Not copied: version control, the virtualenv (the tests run with this checkout's), caches.
SKIP = (".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
        ".hypothesis", "dist", "build", "*.egg-info")
PYTEST_TIMEOUT = 900.0  # seconds for one mutant's tests; the tests' own timeout is shorter
KILLED, SURVIVED, STALE, ERROR = "killed", "SURVIVED", "STALE", "ERROR"


@dataclass(frozen=True)
class Outcome:
    mutant: Mutant
    result: str
    seconds: float
    detail: str = ""


def stale_reason(mutant: Mutant, root: str) -> Optional[str]:
    """Why MUTANT cannot be applied in the tree at ROOT, or None."""
    try:
        with open(os.path.join(root, mutant.file), encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        return f"{mutant.file}: {exc.strerror}"
    found = text.count(mutant.old)
    if found != 1:
        return (f"its code occurs {found} times in {mutant.file} (exactly once expected): "
                "update the mutant in tests/mutation/mutants.py to the code it breaks")
    return None


def copy_tree(dest: str) -> str:
    tree = os.path.join(dest, "tree")
    shutil.copytree(REPO, tree, symlinks=True, ignore=shutil.ignore_patterns(*SKIP))
    os.chmod(dest, 0o755)  # as readable as a checkout: some tests run code as other accounts
    return tree


def kill_leftovers(before: frozenset[int]) -> list[int]:
    """Kill every process of an account that had none BEFORE a run and that the host's passwd
    does not know (the tests' accounts live in their namespace's passwd only): a mutant that
    breaks a session's end lets the tests' pid-hoppers outlive them. The uids killed."""
    import pwd

    from tests.support.isolation import live_processes

    def strays() -> set[int]:
        found = set()
        for uid in set(live_processes(zombies=True).values()) - before:
            try:
                pwd.getpwuid(uid)
            except KeyError:
                found.add(uid)
        return found

    killed: set[int] = set()
    for _ in range(150):  # until their zombies too are reaped
        left = strays()
        if not left:
            break
        killed |= left
        for uid in left:  # kill(-1) as the account: forks cannot outrun it
            subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                            "--", "kill", "-9", "-1"], check=False, capture_output=True)
        time.sleep(0.1)
    return sorted(killed)


def run_tests(tree: str, tests: tuple[str, ...], log: str) -> tuple[int, str]:
    """Run pytest on TESTS in TREE; (its exit code, the tail of its output). Processes the
    tests' accounts leave behind are killed (and named at the end of the output)."""
    from tests.support.isolation import live_processes

    before = frozenset(live_processes(zombies=True).values())
    env = dict(os.environ)
    sbin = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env["PATH"] = f"{REPO}/.venv/bin:{sbin}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = tree  # the copy's agent package, never the checkout's
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    python = os.path.join(REPO, ".venv", "bin", "python")
    # Each module's tests together, in their given order: pytest runs node ids as given, and a
    # module's fixtures (its accounts) would be torn down and made again between two modules.
    grouped = sorted(tests, key=lambda t: t.split("::", 1)[0])
    argv = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *grouped]
    with open(log, "wb") as out:
        try:
            rc = subprocess.run(argv, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, timeout=PYTEST_TIMEOUT).returncode
        except subprocess.TimeoutExpired:
            rc = -1
        killed = kill_leftovers(before)
        if killed:
            note = f"scripts/mutants: killed what uids {killed} left running"
            out.write(f"\n{note}\n".encode())
            print(f"  ({note})", flush=True)
    with open(log, "rb") as fh:
        tail = fh.read()[-3000:].decode("utf-8", "replace")
    return rc, tail


def forget_bytecode(tree: str, file: str) -> None:
    """Drop FILE's cached bytecode: the mutant and the original can have the same size and
    mtime second, and a subprocess that writes bytecode could then run the wrong one."""
    directory, name = os.path.split(os.path.join(tree, file))
    cache = os.path.join(directory, "__pycache__")
    stem = os.path.splitext(name)[0] + "."
    try:
        entries = os.listdir(cache)
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.startswith(stem):
            os.unlink(os.path.join(cache, entry))


def try_mutant(tree: str, mutant: Mutant, logs: str) -> Outcome:
    t0 = time.monotonic()
    why = stale_reason(mutant, tree)
    if why is not None:
        return Outcome(mutant, STALE, 0.0, why)
    path = os.path.join(tree, mutant.file)
    with open(path, encoding="utf-8") as fh:
        original = fh.read()
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(original.replace(mutant.old, mutant.new, 1))
        forget_bytecode(tree, mutant.file)
        rc, tail = run_tests(tree, mutant.tests, os.path.join(logs, f"{mutant.id}.log"))
    finally:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(original)
        forget_bytecode(tree, mutant.file)
    seconds = time.monotonic() - t0
    if rc == 1:  # pytest: tests ran and some failed
        return Outcome(mutant, KILLED, seconds)
    if rc == 0:
        return Outcome(mutant, SURVIVED, seconds, "every test passed with the mutant:\n" + tail)
    return Outcome(mutant, ERROR, seconds, f"pytest exited {rc} (not a test failure):\n{tail}")


def table(outcomes: list[Outcome]) -> str:
    rows = [("mutant", "file", "result", "seconds")]
    rows += [(o.mutant.id, o.mutant.file, o.result, f"{o.seconds:.1f}") for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>7}"
             for r in rows]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="scripts/mutants",
        description="Apply each security mutant to a scratch copy of the tree and run the "
                    "tests that must catch it. Exit 1 on a survivor, a stale mutant or an error.")
    ap.add_argument("ids", nargs="*", metavar="ID", help="run only these mutants")
    ap.add_argument("--list", action="store_true", help="list the mutants and their tests")
    ap.add_argument("--check", action="store_true",
                    help="only check that every mutant still applies (no tests run)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip running the tests on the unmodified copy first")
    ap.add_argument("--logs", metavar="DIR",
                    help="keep each pytest run's output in DIR (MUTANT-ID.log, baseline.log)")
    args = ap.parse_args(argv)

    unknown = sorted(set(args.ids) - {m.id for m in MUTANTS})
    if unknown:
        ap.error(f"no mutant named {', '.join(unknown)}")
    if len({m.id for m in MUTANTS}) != len(MUTANTS):
        ap.error("two mutants have the same id in tests/mutation/mutants.py")
    selected = [m for m in MUTANTS if not args.ids or m.id in args.ids]
    if args.list:
        for m in selected:
            print(f"{m.id}  {m.file}\n    " + "\n    ".join(m.tests))
        return 0
    if args.check:
        bad = [(m, stale_reason(m, REPO)) for m in selected]
        for m, why in bad:
            if why is not None:
                print(f"STALE {m.id}: {why}")
        print(f"{len(selected)} mutants, {sum(why is not None for _, why in bad)} stale")
        return 1 if any(why is not None for _, why in bad) else 0
    if not os.access(os.path.join(REPO, ".venv", "bin", "python"), os.X_OK):
        print("scripts/mutants: no .venv: run scripts/bootstrap --test first", file=sys.stderr)
        return 2

    started = time.monotonic()
    scratch = tempfile.mkdtemp(prefix="runas-agent-mutants-")
    try:
        tree = copy_tree(scratch)
        logs = args.logs or os.path.join(scratch, "logs")
        os.makedirs(logs, exist_ok=True)
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in selected for t in m.tests))
            print(f"baseline: {len(tests)} test selections on the unmodified tree", flush=True)
            rc, tail = run_tests(tree, tests, os.path.join(logs, "baseline.log"))
            if rc != 0:
                print(tail)
                print(f"scripts/mutants: the tests fail without any mutant (pytest exited {rc}); "
                      "fix them first", file=sys.stderr)
                return 1
        outcomes = []
        for m in selected:
            o = try_mutant(tree, m, logs)
            print(f"{o.result:<8} {o.mutant.id} ({o.seconds:.1f}s)", flush=True)
            outcomes.append(o)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print()
    print(table(outcomes))
    failed = [o for o in outcomes if o.result != KILLED]
    for o in failed:
        print(f"\n== {o.result} {o.mutant.id} ({o.mutant.file}): {o.detail}")
    print(f"\n{len(outcomes)} mutants: {len(outcomes) - len(failed)} killed, "
          + ", ".join(f"{sum(o.result == r for o in outcomes)} {r.lower()}"
                      for r in (SURVIVED, STALE, ERROR))
          + f"; {time.monotonic() - started:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
