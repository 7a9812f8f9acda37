"""Resumable steps: each validates its output and is skipped when done; every command it runs is logged.

A step is some in-process preparation (``prepare``: files its commands read) and then commands of the
public CLI, each run as a child process whose output streams to the console and to ``logs/<step>.log``.
Its completion is recorded as ``OUT/.steps/<name>.json`` (written atomically after the step's own
validation passes) with the step's settings, when it finished and the command lines it ran; a rerun skips a
step whose record exists, whose settings are unchanged, which finished after every step before it (a step
that ran again makes every later one run again) and whose outputs still validate. A step that runs again with
other settings than it recorded first removes its ``clear_on_change`` folders (the video features: their
extractor does not record every setting that moves their values); otherwise a rerun step's own commands
decide what they redo: the feature extractors keep a clip's existing file only when it was computed from the
clip's files as they are now (each feature file records their sha256), so a world made again with another
preset or seed under the same OUT has every changed clip extracted again. ``OUT/commands.sh`` lists every step's command lines, so that any one can be rerun by hand.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llavidal.utils.io import atomic_write_json, atomic_write_text

COMMANDS_SCRIPT = "commands.sh"


class StepFailed(RuntimeError):
    pass


@dataclass
class Command:
    """One command line and the environment variables it runs with (on top of the caller's)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        """The command as a shell line (environment first), to paste into a terminal."""
        env = [f"{key}={shlex.quote(value)}" for key, value in self.env.items()]
        return " ".join(env + [shlex.quote(a) for a in self.argv])


@dataclass
class Step:
    name: str
    title: str
    validate: Callable[[], bool]
    settings: dict = field(default_factory=dict)
    commands: Callable[[], Sequence[Command]] = tuple
    """The step's commands, built when it runs (they may depend on what earlier steps wrote)."""
    prepare: Callable[[], None] | None = None
    """In-process work done before the commands (files they read)."""
    prepares: str = ""
    """What ``prepare`` writes, for ``commands.sh``."""
    clear_on_change: tuple[Path, ...] = ()
    """Folders the step writes whose files its commands would keep on a rerun although its settings changed
    (a feature extractor resumes every file made with the same recipe, and its recipe does not record, say, the
    encoder's batch size, which moves the values by float rounding): removed before the step runs again with
    other settings than those it recorded, so that its files are those of its settings."""


@dataclass
class StepResult:
    name: str
    title: str
    status: str  # "done" | "skipped"
    seconds: float


class StepRunner:
    def __init__(self, out_dir: str | os.PathLike, log: Callable[[str], None] = print):
        self.out_dir = Path(out_dir)
        self.state_dir = self.out_dir / ".steps"
        self.log_dir = self.out_dir / "logs"
        self.script = self.out_dir / COMMANDS_SCRIPT
        self.log = log
        self.results: list[StepResult] = []

    def record_path(self, step: Step) -> Path:
        return self.state_dir / f"{step.name}.json"

    def _record(self, step: Step) -> dict | None:
        try:
            return json.loads(self.record_path(step).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def is_done(self, step: Step, after: float = 0.0) -> bool:
        """Whether ``step`` is recorded with its current settings, finished no earlier than ``after`` (the latest
        finish of the steps before it: one that ran again since makes this one stale, whatever its own settings),
        and its output still validates."""
        saved = self._record(step)
        if saved is None or saved.get("settings") != json.loads(json.dumps(step.settings)):
            return False
        if float(saved.get("finished", 0.0)) < after:
            return False
        return bool(step.validate())

    def _clear_if_changed(self, step: Step) -> None:
        """Remove ``step.clear_on_change`` when the step's record holds other settings than its current ones,
        then its record (a run killed after this resumes the new settings' files instead of removing them)."""
        saved = self._record(step)
        if not step.clear_on_change or saved is None:
            return
        current = json.loads(json.dumps(step.settings))
        before = saved.get("settings") or {}
        changed = sorted(k for k in set(before) | set(current) if before.get(k) != current.get(k))
        if not changed:
            return
        for folder in step.clear_on_change:
            if Path(folder).exists():
                self.log(f"  settings changed ({', '.join(changed)}): removing {folder}, made with the old ones")
                shutil.rmtree(folder)
        self.record_path(step).unlink(missing_ok=True)

    def run(self, steps: list[Step]) -> list[StepResult]:
        """Run ``steps`` in order, skipping each that is done (:meth:`is_done`); the steps after one that runs
        run too, since they may read what it wrote (a new world's clips, new features)."""
        total = len(steps)
        latest = 0.0  # when the last step so far finished (as recorded)
        for index, step in enumerate(steps, 1):
            prefix = f"[{index}/{total}] {step.title}"
            if self.is_done(step, after=latest):
                self.log(f"{prefix}: done already, skipped")
                self.results.append(StepResult(step.name, step.title, "skipped", 0.0))
                latest = max(latest, float((self._record(step) or {}).get("finished", 0.0)))
                continue
            self.log(f"{prefix} ...")
            self._clear_if_changed(step)
            start = time.perf_counter()
            ran: list[Command] = []
            try:
                if step.prepare is not None:
                    step.prepare()
                for command in step.commands():
                    ran.append(command)
                    run_command(command.argv, env=command.env, log_file=self.log_dir / f"{step.name}.log", echo=self.log)
                if not step.validate():
                    raise StepFailed(f"step '{step.name}' finished but its output does not validate; see the log above")
            except BaseException:
                self.write_script(steps, running=(step, ran))
                raise
            seconds = time.perf_counter() - start
            latest = max(latest, time.time())
            atomic_write_json(self.record_path(step), {"settings": step.settings, "seconds": seconds,
                                                       "finished": latest,
                                                       "commands": [c.shell() for c in ran]})
            self.log(f"{prefix}: done in {seconds:.0f} s")
            self.results.append(StepResult(step.name, step.title, "done", seconds))
        self.write_script(steps)
        return self.results

    def write_script(self, steps: list[Step], running: tuple[Step, list[Command]] | None = None) -> Path:
        """``OUT/commands.sh``: each step's command lines (as recorded when it ran), in order."""
        lines = ["#!/bin/sh", f"# The commands of {self.out_dir.name}'s steps, in order; each can be rerun by hand.",
                 "# Steps marked 'in-process' wrote the files named there before their commands ran.", "set -e"]
        for index, step in enumerate(steps, 1):
            lines += ["", f"# [{index}/{len(steps)}] {step.name}: {step.title}"]
            if step.prepares:
                lines.append(f"# in-process: {step.prepares}")
            if running is not None and running[0] is step:
                lines.append("# (this step did not finish)")
                commands = [c.shell() for c in running[1]]
            else:
                saved = self._record(step)
                commands = saved.get("commands") if saved else None
                if commands is None:
                    lines.append("# (not run yet)" if saved is None else "# (commands not recorded)")
                    continue
            lines += commands or ["# (no command)"]
        atomic_write_text(self.script, "\n".join(lines) + "\n")
        return self.script


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
