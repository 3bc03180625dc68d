"""Running the stages of an experiment: each is one of the repository's scripts as a subprocess
with its output in a log, skipped when its output file exists, several at a time; a dry run parses
every command with its script's create_argparser() instead. Used by experiments/mnist_cpu.py."""

import concurrent.futures
import importlib
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import utils  # noqa: E402


class Stage:
    """One command: `script` with `argv`, complete when the file `done` exists."""

    def __init__(self, name, script, argv, done, threads, log):
        self.name, self.script, self.argv, self.done, self.threads, self.log = name, script, argv, done, threads, log

    def command(self):
        return [sys.executable, os.path.join(ROOT, self.script), *map(str, self.argv)]

    def shell(self):
        return f"OMP_NUM_THREADS={self.threads} " + shlex.join(
            ["python", self.script, *map(str, self.argv)])


def check_flags(stage):
    """The error line of the stage's script parsing its flags, or None."""
    parser = importlib.import_module(stage.script[:-3]).create_argparser()
    errors = []
    parser.error = lambda message: (errors.append(message), sys.exit(2))
    try:
        parser.parse_args([str(a) for a in stage.argv])
    except SystemExit:
        return errors[-1] if errors else "--help"
    return None


def run_command(stage):
    """Run the stage's command with its output in its log; returns the exit code."""
    os.makedirs(os.path.dirname(stage.log), exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(stage.threads), PYTHONUNBUFFERED="1")
    with open(stage.log, "w") as log:
        return subprocess.call(stage.command(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def log_tail(path, n=3):
    """The last n lines of a log worth showing: its error lines if it has any, else its last
    lines, without progress bars."""
    try:
        text = open(path, errors="replace").read().replace("\r", "\n")
    except OSError:
        return []
    lines = [line for line in text.splitlines() if line.strip() and "it/s]" not in line and "s/it]" not in line]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines)[-n:]


class Runner:
    """Runs groups of stages, `jobs` at a time, skipping the complete ones and recording wall times;
    with `dry_run` it prints each command and counts those whose flags their script refuses."""

    def __init__(self, dry_run=False):
        self.dry_run = dry_run
        self.flag_errors = 0

    def record(self, times, name, seconds):
        print(f"[done] {name}: {seconds:.0f} s", flush=True)
        if times is not None:
            new = not os.path.exists(times)
            with open(times, "a") as f:
                f.write(("stage\tseconds\n" if new else "") + f"{name}\t{seconds:.0f}\n")

    def run(self, stages, jobs=1, times=None, group=None):
        todo = []
        for stage in stages:
            if self.dry_run:
                error = check_flags(stage)
                print(("[FLAG] " + error + "\n       " if error else "") + stage.shell())
                self.flag_errors += bool(error)
            elif os.path.exists(stage.done):
                print(f"[skip] {stage.name} ({stage.done} exists)")
            else:
                todo.append(stage)
        if not todo:
            return
        start = time.time()

        def one(stage):
            print(f"[run ] {stage.name}", flush=True)
            began = time.time()
            code = run_command(stage)
            if code == 0 and not os.path.exists(stage.done):
                code = "no output"
            if code == 0:
                self.record(times, stage.name, time.time() - began)
            return stage, code

        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(one, todo))
        failed = [(stage, code) for stage, code in results if code != 0]
        for stage, code in failed:
            print(f"[fail] {stage.name} ({code}): see {stage.log}")
            for line in log_tail(stage.log):
                print("       " + line)
        if failed:
            raise utils.UserError(f"{len(failed)} stage(s) failed; fix the cause and run the same command again "
                                  "(finished stages are kept)")
        if group is not None and len(todo) > 1:
            self.record(times, f"{group}, wall ({jobs} at once)", time.time() - start)


def check_settings(out, settings, dry_run=False):
    """Refuse an `out` made with other `settings` (a dict of flag -> value): its stages would be
    skipped and mixed in. Records them in a new `out`."""
    path = os.path.join(out, "settings.json")
    if os.path.exists(path):
        old = json.load(open(path))
        changed = [f"--{k} {old.get(k)} -> {v}" for k, v in settings.items() if old.get(k) != v]
        if changed:
            raise utils.UserError(f"{out} was made with other settings ({'; '.join(changed)}): use the same "
                                  "ones or another --out")
    elif not dry_run:
        os.makedirs(out, exist_ok=True)
        utils.atomic_write(path, lambda f: f.write(json.dumps(settings, indent=1).encode()))


def write_lines(path, lines):
    utils.atomic_write(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(lines))
