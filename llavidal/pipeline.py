"""Resumable multi-step pipelines: each step validates its output and is skipped when done.

A step's completion is recorded as ``DIR/.steps/<name>.json`` (written atomically after the step's
own validation passes), together with the step's settings; a rerun skips a step whose record exists,
whose settings are unchanged and whose outputs still validate. Used by the quickstart.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llavidal.utils.io import atomic_write_json


class StepFailed(RuntimeError):
    pass


@dataclass
class Step:
    name: str
    title: str
    run: Callable[[], None]
    validate: Callable[[], bool]
    settings: dict = field(default_factory=dict)


@dataclass
class StepResult:
    name: str
    title: str
    status: str  # "done" | "skipped"
    seconds: float


class Pipeline:
    def __init__(self, out_dir: str | os.PathLike, log=print):
        self.out_dir = Path(out_dir)
        self.state_dir = self.out_dir / ".steps"
        self.log = log
        self.results: list[StepResult] = []

    def _record_path(self, step: Step) -> Path:
        return self.state_dir / f"{step.name}.json"

    def is_done(self, step: Step) -> bool:
        record = self._record_path(step)
        if not record.exists():
            return False
        try:
            saved = json.loads(record.read_text())
        except json.JSONDecodeError:
            return False
        if saved.get("settings") != json.loads(json.dumps(step.settings)):
            return False
        return bool(step.validate())

    def run(self, steps: list[Step]) -> list[StepResult]:
        total = len(steps)
        for index, step in enumerate(steps, 1):
            prefix = f"[{index}/{total}] {step.title}"
            if self.is_done(step):
                self.log(f"{prefix}: done already, skipped")
                self.results.append(StepResult(step.name, step.title, "skipped", 0.0))
                continue
            self.log(f"{prefix} ...")
            start = time.perf_counter()
            step.run()
            if not step.validate():
                raise StepFailed(f"step '{step.name}' finished but its output does not validate; see the log above")
            seconds = time.perf_counter() - start
            atomic_write_json(self._record_path(step), {"settings": step.settings, "seconds": seconds, "finished": time.time()})
            self.log(f"{prefix}: done in {seconds:.0f} s")
            self.results.append(StepResult(step.name, step.title, "done", seconds))
        return self.results


def run_command(args: list[str], env: dict | None = None, log_file: str | os.PathLike | None = None, echo=print) -> None:
    """Run a command (our own CLI, usually), streaming its output; raise StepFailed on failure."""
    echo("  $ " + " ".join(shlex.quote(a) for a in args))
    full_env = dict(os.environ)
    full_env.update(env or {})
    if log_file is None:
        completed = subprocess.run(args, env=full_env, check=False)
        code = completed.returncode
    else:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as handle:
            process = subprocess.Popen(args, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert process.stdout is not None
            # Chunks, not lines: progress bars redraw with "\r" and must show as they happen.
            while chunk := process.stdout.read1(65536):
                handle.write(chunk)
                handle.flush()
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            code = process.wait()
    if code != 0:
        where = f"; full log in {log_file}" if log_file else ""
        raise StepFailed(f"command failed with exit status {code}: {' '.join(args[:4])} ...{where}")
