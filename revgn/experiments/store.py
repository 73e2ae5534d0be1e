"""Resumable output folders: every finished run is written atomically to ``DIR/runs/KEY.json``
together with the settings it ran under; running again reuses the runs whose settings match and
reruns (replacing) those whose settings changed.

A run that takes hours also saves its state mid-run (``DIR/runs/KEY.partial.pt``, a
``Checkpoint``): an interrupted run continues from its last saved epoch instead of from the
start, and the file goes once the run is finished."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch


def atomic_json(path, obj) -> None:
    """Write ``obj`` as JSON to a temporary file beside ``path`` and rename it over ``path``, so
    a reader (or an interrupted run) never sees a half-written file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _canonical(settings: dict) -> dict:
    # tuples become lists in JSON: compare settings in their stored form
    return json.loads(json.dumps(settings, sort_keys=True))


class Checkpoint:
    """The mid-run state of one run, stored at ``path`` with the settings it belongs to.

    ``load()`` returns the state saved by a run with the same settings, or None (no file, or a
    file from other settings, which is then discarded with a message); ``save(state)`` replaces
    the file atomically, so an interruption during a save leaves the previous state intact.
    States hold tensors, numbers, strings and containers of them (``torch.load`` with
    ``weights_only``)."""

    def __init__(self, path: str, settings: dict):
        self.path, self.settings = path, _canonical(settings)

    def load(self) -> dict | None:
        if not os.path.exists(self.path):
            return None
        try:
            # on the CPU: load_state_dict moves each tensor to where its model or optimizer lives
            stored = torch.load(self.path, map_location="cpu", weights_only=True)
            settings, state = stored["settings"], stored["state"]
        except Exception as exc:  # truncated, foreign or from an older layout: start afresh
            return self._discard_because(f"unreadable ({type(exc).__name__})")
        if settings != self.settings:
            return self._discard_because("saved under other settings")
        return state

    def save(self, state: dict) -> None:
        tmp = f"{self.path}.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                torch.save(dict(settings=self.settings, state=state), f)
                f.flush()
                os.fsync(f.fileno())  # on disk before it replaces the previous state
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def discard(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)

    def _discard_because(self, reason: str) -> None:
        print(f"discarding {os.path.basename(self.path)}: {reason}", file=sys.stderr)
        self.discard()
        return None


@dataclass
class Job:
    """One run: ``key`` names its checkpoint, ``settings`` are everything it depends on,
    ``work`` units its share of the progress bar, ``fn(progress)`` runs it; a ``resumable``
    job's ``fn(progress, checkpoint)`` also gets the ``Checkpoint`` to save its state in."""
    key: str
    settings: dict
    fn: Callable
    work: int = 1
    resumable: bool = False


def run_jobs(jobs: list[Job], out_dir: str, progress) -> list[dict]:
    """Run every job not already checkpointed with the same settings; return all results in
    job order. Each result is stored with its settings under ``"settings"``."""
    folder = os.path.join(out_dir, "runs")
    os.makedirs(folder, exist_ok=True)
    keys = [job.key for job in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate run keys: {sorted(k for k in keys if keys.count(k) > 1)}")
    results = []
    for job in jobs:
        path = os.path.join(folder, f"{job.key}.json")
        partial = os.path.join(folder, f"{job.key}.partial.pt")
        settings = _canonical(job.settings)
        if os.path.exists(path):
            with open(path) as f:
                stored = json.load(f)
            if stored.get("settings") == settings:
                if os.path.exists(partial):  # left by an interruption after the run was written
                    os.remove(partial)
                results.append(stored)
                progress.update(job.work, f"{job.key} (done before)")
                continue
            print(f"rerunning {job.key}: its settings differ from the stored run's",
                  file=sys.stderr)
        if job.resumable:
            checkpoint = Checkpoint(partial, settings)
            result = dict(job.fn(progress, checkpoint), settings=settings)
        else:
            checkpoint, result = None, dict(job.fn(progress), settings=settings)
        atomic_json(path, result)
        if checkpoint is not None:  # only once the finished run is safely on disk
            checkpoint.discard()
        results.append(result)
    return results
