"""Resumable output folders: every finished run is written atomically to ``DIR/runs/KEY.json``
together with the settings it ran under; running again reuses the runs whose settings match and
reruns (replacing) those whose settings changed."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Callable


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


@dataclass
class Job:
    """One run: ``key`` names its checkpoint, ``settings`` are everything it depends on,
    ``work`` units its share of the progress bar, ``fn(progress)`` runs it."""
    key: str
    settings: dict
    fn: Callable
    work: int = 1


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
        settings = _canonical(job.settings)
        if os.path.exists(path):
            with open(path) as f:
                stored = json.load(f)
            if stored.get("settings") == settings:
                results.append(stored)
                progress.update(job.work, f"{job.key} (done before)")
                continue
            print(f"rerunning {job.key}: its settings differ from the stored run's",
                  file=sys.stderr)
        result = dict(job.fn(progress), settings=settings)
        atomic_json(path, result)
        results.append(result)
    return results
