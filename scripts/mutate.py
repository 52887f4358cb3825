"""``make mutate``: mutation testing of the pure core with mutmut (pinned in the ``mutate`` extra).

Not part of ``make test``/CI (a fresh run of every group took 77 minutes on 2 shared cores:
policy 8, calibration 13, codec 30, batch 19, decision 7; after the learning loop, fresh runs of
calibration took 5 and of batch 36 minutes, on cores shared with other jobs; on a quiet machine, decision 7 and
batch 7); run it before closing an issue
that touches the core. It writes ``docs/mutation-report.md``: the score per module and every
surviving mutant, each with its explanation from ``docs/mutation-equivalents.toml`` or marked
UNEXPLAINED (a survivor needs a test that kills it, or an entry there saying why it is harmless).

The core is measured in groups (:data:`GROUPS`), each with the tests that exercise it: mutmut runs,
per mutant, every selected test that executed the mutated function, and a pytest start with the
golden fixtures costs seconds, so one selection for everything would take hours on 2 cores.

Why staging directories: mutmut 3 names a mutant after its file path and puts only ``./``,
``src/`` or ``source/`` on ``sys.path``, while this repository keeps its package in ``daemon/``.
So each group runs in ``.mutate/<group>/`` (git-ignored), laid out as mutmut expects::

    pyproject.toml      the repository's pytest settings + a generated [tool.mutmut] table
    taskclf_daemon  ->  <repo>/daemon/taskclf_daemon  (mutmut copies it to mutants/ and mutates)
    tests           ->  <repo>/tests                  (mutmut copies it to mutants/tests)
    mutants/<other top-level entries of the repo>     (symlinks: config/, README.md, ...)
    shared          ->  <repo>/../shared              (tests read the golden fixture there)

Results are cached per group: an interrupted run resumes where it stopped; ``--fresh`` starts
over (needed after changing the code or the tests).
The cache lives in the checkout (``.mutate/`` is not in git), so a checkout that measures only
some groups keeps the others' rows and survivors from the previous report, marked there as
carried over (their explanations are still re-read from the equivalents file).

Usage::

    python scripts/mutate.py                          # every group, 2 workers
    python scripts/mutate.py --groups policy codec
    python scripts/mutate.py --rerun-survivors        # after adding tests: re-check the survivors
    python scripts/mutate.py --report-only            # rewrite the report from the cached results
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = REPO / ".mutate"
REPORT = REPO / "docs" / "mutation-report.md"
EQUIVALENTS = REPO / "docs" / "mutation-equivalents.toml"

_COMMON = ("-m", "not broker and not slow", "-p", "no:cacheprovider")

#: group -> (modules under taskclf_daemon/, the fast tests that exercise them). Broker/slow
#: tests, the lleaves compile, spawned worker processes and CLI runs are left out: they reach
#: the core only through what these tests check directly.
GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "decision": (
        ("pipeline/decision.py", "state.py", "offsets.py", "forgetting.py"),
        ("tests/pipeline/test_decision.py", "tests/test_state.py", "tests/runtime/test_offsets.py", "tests/pipeline/test_event_time.py", "tests/pipeline/test_batch.py",
         # state.py's serialisation, deferred decode and learning-state blocks (lean state, issue 12)
         "tests/test_state_deferred.py", "tests/runtime/test_state_memory.py", "tests/runtime/test_state_blocks.py",
         "tests/runtime/test_forgetting.py", "tests/runtime/test_shard.py::test_retention_forgets_users_by_their_own_last_sight_not_by_anyone_elses_event_time",
         "tests/runtime/test_shard.py::test_capacity_forgets_the_least_recently_seen_clean_users"),
    ),
    "policy": (("pipeline/policy.py",), ("tests/pipeline/test_policy.py", "tests/pipeline/test_artifacts.py")),
    "calibration": (("pipeline/calibration.py",), ("tests/pipeline/test_calibration.py", "tests/pipeline/test_batch.py")),
    "batch": (
        ("pipeline/batch.py",),
        ("tests/pipeline/test_batch.py", "tests/pipeline/test_event_time.py", "tests/pipeline/test_pipeline_taxonomy.py",
         "tests/pipeline/test_artifacts.py", "tests/pipeline/test_decision.py",
         "--deselect=tests/pipeline/test_pipeline_taxonomy.py::test_replay_with_taxonomy"),
    ),
    "codec": (
        ("codec.py",),
        ("tests/test_codec.py", "tests/test_codec_fastdecode.py", "tests/test_codec_fresh_build.py", "tests/test_codec_paths.py", "tests/test_schema.py"),
    ),
}
CORE = tuple(m for mods, _ in GROUPS.values() for m in mods)

_STATUS_KILLED = {"killed", "timeout"}


def _toml_list(items: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in items) + "]"


def stage(group: str, fresh: bool) -> Path:
    modules, tests = GROUPS[group]
    d = STAGES / group
    if fresh and d.exists():
        shutil.rmtree(d)
    (d / "mutants").mkdir(parents=True, exist_ok=True)
    links = {d / "taskclf_daemon": REPO / "daemon" / "taskclf_daemon", d / "tests": REPO / "tests"}
    shared = REPO.parent / "shared"
    if shared.is_dir():
        links[d / "shared"] = shared
    skip = {"daemon", "tests", ".git", ".venv", ".mutate", "mutants", "pyproject.toml", "build", "var"}
    for entry in REPO.iterdir():
        if entry.name not in skip and not entry.name.startswith(".pytest"):
            links[d / "mutants" / entry.name] = entry
    for link, target in links.items():
        if link.is_symlink() and link.resolve() == target.resolve():
            continue
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.exists():
            shutil.rmtree(link)
        link.symlink_to(target)
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    pytest_cfg = text[text.index("[tool.pytest.ini_options]"):]
    pytest_cfg = pytest_cfg[: pytest_cfg.find("\n[", 1) + 1 or None]
    cfg = "\n".join([
        "# generated by scripts/mutate.py -- edit that file instead",
        pytest_cfg.rstrip(),
        "",
        "[tool.mutmut]",
        'source_paths = ["taskclf_daemon"]',
        f"only_mutate = {_toml_list(['taskclf_daemon/' + m for m in modules])}",
        f"pytest_add_cli_args_test_selection = {_toml_list(tests + _COMMON)}",
        'pytest_add_cli_args = ["-q", "-x"]',
        # workers fork from a server that only collected the tests: forked from mutmut's main
        # process (the default) they would inherit module-level caches the stats run filled with
        # the original code's results (tests/pipeline/test_batch.py caches golden runs)
        'process_isolation = "forkserver"',
        "use_git_change_detection = false",
        "track_dependencies = false",
        "",
    ])
    (d / "pyproject.toml").write_text(cfg, encoding="utf-8")
    return d


def mutmut(d: Path, *args: str, capture: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MUTANT_UNDER_TEST"}
    # processes the tests start import the mutated copy too, never another checkout's install
    env["PYTHONPATH"] = str(d / "mutants")
    r = subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=d, env=env, text=True, capture_output=capture)
    if r.returncode != 0:
        if capture:
            sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"mutmut {' '.join(args)} (in {d}) failed with exit code {r.returncode}")
    return r.stdout if capture else ""


def results(d: Path) -> dict[str, str]:
    """mutant name -> status (killed, survived, timeout, no tests, not checked, ...)."""
    if not (d / "mutants").is_dir():
        return {}
    res: dict[str, str] = {}
    for line in mutmut(d, "results", "--all", "true", capture=True).splitlines():
        m = re.match(r"^\s+(\S+__mutmut_\d+): (.+)$", line)
        if m:
            res[m.group(1)] = m.group(2).strip()
    return res


def module_of(mutant: str) -> str:
    """``taskclf_daemon.pipeline.batch.xǁInferencePipelineǁprocess__mutmut_3`` -> ``pipeline/batch.py``."""
    parts = mutant.split(".")
    i = next(k for k, p in enumerate(parts) if p.startswith(("x_", "xǁ")))
    return "/".join(parts[1:i]) + ".py"


def _survived(status: str) -> bool:
    return status not in _STATUS_KILLED and status != "skipped"


_ROW = re.compile(r"^\| `(\w+)` \| `([^`]+)` \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|")
_SECTION = re.compile(r"^### `(\S+__mutmut_\d+)` \(([^)]+)\)$")


def _previous_report() -> tuple[dict[str, tuple[int, int, int, int]], dict[str, tuple[str, list[str]]]]:
    """The last report's module rows (module -> mutants, killed, survived, not run) and survivors
    (name -> status, diff lines): a group not measured in this checkout keeps them."""
    rows: dict[str, tuple[int, int, int, int]] = {}
    survivors: dict[str, tuple[str, list[str]]] = {}
    if not REPORT.is_file():
        return rows, survivors
    lines = REPORT.read_text(encoding="utf-8").splitlines()
    for i, ln in enumerate(lines):
        if m := _ROW.match(ln):
            rows[m.group(2)] = (int(m.group(3)), int(m.group(4)), int(m.group(5)), int(m.group(6)))
        elif m := _SECTION.match(ln):
            diff: list[str] = []
            if i + 2 < len(lines) and lines[i + 2] == "```diff":
                for d in lines[i + 3:]:
                    if d == "```":
                        break
                    diff.append(d)
            survivors[m.group(1)] = (m.group(2), diff)
    return rows, survivors


def write_report(elapsed: dict[str, float]) -> tuple[float, int, list[str]]:
    equiv: dict[str, str] = {}
    deferred: dict[str, str] = {}
    if EQUIVALENTS.is_file():
        notes = tomllib.loads(EQUIVALENTS.read_text(encoding="utf-8"))
        equiv, deferred = notes.get("equivalent", {}), notes.get("deferred", {})
    old_rows, old_survivors = _previous_report()
    rows, measured, carried, sections = [], [], [], []
    tot_n = tot_k = tot_eq = 0
    unexplained: list[str] = []
    n_deferred = 0
    for group, (modules, _tests) in GROUPS.items():
        d = STAGES / group
        res = results(d)
        # module -> (mutants, killed, survived, not run); survivor -> (status, diff lines)
        counts: dict[str, tuple[int, int, int, int]] = {}
        survivors: dict[str, tuple[str, list[str]]] = {}
        if res and not all(v == "not checked" for v in res.values()):
            measured.append(group)
            for mod in modules:
                mine = {k: v for k, v in res.items() if module_of(k) == mod}
                n = sum(1 for v in mine.values() if v != "skipped")
                k = sum(1 for v in mine.values() if v in _STATUS_KILLED)
                unchecked = sum(1 for v in mine.values() if v == "not checked")
                counts[mod] = (n, k, n - k - unchecked, unchecked)
            for s in sorted(k for k, v in res.items() if _survived(v) and v != "not checked"):
                try:
                    diff = mutmut(d, "show", s, capture=True)
                except SystemExit:  # e.g. the group is being re-run right now
                    diff = "- (diff unavailable: run `--report-only` again)"
                survivors[s] = (res[s], [ln for ln in diff.splitlines() if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))][:12])
        elif all(mod in old_rows for mod in modules):
            # no results in this checkout (.mutate/ is not in git): keep the last report's numbers
            carried.append(group)
            counts = {mod: old_rows[mod] for mod in modules}
            survivors = {s: v for s, v in sorted(old_survivors.items()) if module_of(s) in modules}
        else:
            rows.append(f"| `{group}` | {', '.join(modules)} | not measured | | | | | |")
            continue
        for mod in modules:
            n, k, surv, unchecked = counts[mod]
            eq = sum(1 for s in survivors if module_of(s) == mod and s in equiv)
            tot_n, tot_k, tot_eq = tot_n + n, tot_k + k, tot_eq + eq
            score = f"{100.0 * k / n:.1f}%" if n else "-"
            adj = f"{100.0 * (k + eq) / n:.1f}%" if n else "-"
            rows.append(f"| `{group}` | `{mod}` | {n} | {k} | {surv} | {unchecked} | {eq} | {score} / {adj} |")
        for s, (status, diff_lines) in survivors.items():
            sections += [f"### `{s}` ({status})", "", "```diff", *diff_lines, "```", ""]
            if s in equiv:
                sections.append(f"**Equivalent:** {equiv[s]}")
            elif s in deferred:
                n_deferred += 1
                sections.append(f"**Not equivalent, deferred:** {deferred[s]}")
            else:
                unexplained.append(s)
                sections.append("**UNEXPLAINED** -- write a test that kills it, or explain it in `docs/mutation-equivalents.toml`.")
            sections.append("")
    total = 100.0 * tot_k / tot_n if tot_n else 0.0
    adj_total = 100.0 * (tot_k + tot_eq) / tot_n if tot_n else 0.0
    lines = [
        "# Mutation report",
        "",
        "Generated by `make mutate` (`scripts/mutate.py`; mutmut pinned in the `mutate` extra of",
        "`pyproject.toml`). Each group of core modules is mutated against the fast tests that exercise",
        "it (no broker, no `slow` marker; the selections are in `GROUPS` in the script). A mutant is",
        "*killed* when a test fails (or times out) with it applied. Every survivor below is either",
        "equivalent or deferred, with the reason from `docs/mutation-equivalents.toml`, or UNEXPLAINED:",
        "then it needs a test. Regenerate after changing the core or its tests",
        "(`make mutate MUTATE_ARGS=--fresh`; `--rerun-survivors` re-checks only the survivors).",
        "",
        f"Groups measured: {', '.join('`' + g + '`' for g in measured) or 'none'}."
        + (" Wall time of the runs of the last invocation: " + ", ".join(f"{g} {t / 60:.0f} min" for g, t in elapsed.items()) + "." if elapsed else "")
        + (" Carried over unchanged from the previous report (not run in the checkout that wrote this one;"
           " their explanations are re-read from the equivalents file): " + ", ".join(f"`{g}`" for g in carried) + "." if carried else ""),
        "",
        "| group | module | mutants | killed | survived | not run | survivors equivalent | score / without equivalents |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        f"| **total** | | {tot_n} | {tot_k} | | | {tot_eq} | **{total:.1f}% / {adj_total:.1f}%** |",
        "",
        f"Unexplained survivors: {len(unexplained)}. Deferred (not equivalent; the test belongs to another issue): {n_deferred}.",
        "",
        "## Survivors",
        "",
        *(sections or ["None."]),
    ]
    REPORT.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return total, len(unexplained), measured + carried


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS), help="default: all")
    ap.add_argument("--jobs", type=int, default=2, help="parallel mutmut workers (default 2)")
    ap.add_argument("--fresh", action="store_true", help="drop the groups' cached results first")
    ap.add_argument("--report-only", action="store_true", help="only rewrite the report from cached results")
    ap.add_argument("--rerun-survivors", action="store_true", help="run only the cached survivors again (after adding tests)")
    a = ap.parse_args(argv)
    elapsed: dict[str, float] = {}
    for group in a.groups:
        if a.report_only:
            break
        d = stage(group, a.fresh)
        t0 = time.monotonic()
        if a.rerun_survivors:
            names = sorted(k for k, v in results(d).items() if _survived(v) and v != "not checked")
            if names:  # named mutants are run again even when cached
                mutmut(d, "run", "--max-children", str(a.jobs), *names)
        else:
            mutmut(d, "run", "--max-children", str(a.jobs))
        elapsed[group] = time.monotonic() - t0
        write_report(elapsed)  # after each group: the report is never older than the last run
    score, unexplained, measured = write_report(elapsed)
    print(f"mutation score {score:.1f}% over the groups {', '.join(measured)}; {unexplained} unexplained survivor(s); report: {REPORT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
