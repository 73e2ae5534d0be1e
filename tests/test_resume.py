"""A run interrupted midway continues from its saved state exactly as if it had not stopped: the
same history (all but the seconds) and batch losses."""
import os

import pytest
import torch

from revgn.data import load_dataset
from revgn.experiments.store import Checkpoint, Job, run_jobs
from revgn.experiments.training import RunSpec, run


class Interrupted(Exception):
    pass


class StopAfter:
    """A progress bar that interrupts the run after ``epochs`` epoch updates."""

    def __init__(self, epochs):
        self.left = epochs

    def update(self, n=1, note=""):
        self.left -= n
        if self.left == 0:
            raise Interrupted(note)


class Count:
    def __init__(self):
        self.done, self.notes = 0, []

    def update(self, n=1, note=""):
        self.done += n
        self.notes.append(note)


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits").subset(150, 70)


def _without_seconds(result):
    return dict(result, history=[{k: v for k, v in row.items() if k != "seconds"}
                                 for row in result["history"]])


def _interrupted_then_resumed(spec, data, tmp_path, stop_after, capsys=None):
    checkpoint = Checkpoint(str(tmp_path / "run.partial.pt"), dict(spec=spec.as_dict()))
    with pytest.raises(Interrupted):
        run(spec, data, progress=StopAfter(stop_after), checkpoint=checkpoint, save_every=0)
    assert os.path.exists(checkpoint.path)
    progress = Count()
    resumed = run(spec, data, progress=progress, checkpoint=checkpoint, save_every=0)
    assert progress.done == spec.epochs and "resumed after epoch" in progress.notes[0]
    if capsys is not None:  # and a log says so, where no progress bar shows
        assert f"resuming after epoch {stop_after}" in capsys.readouterr().err
    return resumed


SPECS = {
    "gn-noise-diagnostics": RunSpec(
        "gn", 0.1, seed=3, epochs=4, batch_size=48, model=dict(bottleneck=40),
        options=dict(noise=0.1), track=("ntk", "cka", "cosine", "batch_change"), eval_every=3),
    "adam-full-batch": RunSpec("adam", 1e-3, seed=5, epochs=4, model=dict(bottleneck=33),
                               eval_every=2),
    "sgd": RunSpec("sgd", 0.05, seed=1, epochs=3, batch_size=37, model=dict(bottleneck=20)),
}


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("stop_after", [1, 2])
def test_a_resumed_run_matches_an_uninterrupted_one(name, stop_after, data, tmp_path, capsys):
    spec = SPECS[name]
    straight = run(spec, data)
    resumed = _interrupted_then_resumed(spec, data, tmp_path, stop_after, capsys)
    assert _without_seconds(resumed) == _without_seconds(straight)
    assert resumed["history"][stop_after]["seconds"] > 0


@pytest.mark.parametrize("stop_after", [1, 2, 3])  # before, at and after the switch
def test_a_resumed_switch_run_matches_across_the_switch(stop_after, data, tmp_path):
    spec = RunSpec("gn", 0.1, seed=2, epochs=4, batch_size=50, model=dict(bottleneck=24),
                   then=RunSpec("adam", 1e-3, batch_size=50), switch_epoch=2)
    straight = run(spec, data)
    resumed = _interrupted_then_resumed(spec, data, tmp_path, stop_after)
    assert _without_seconds(resumed) == _without_seconds(straight)
    assert [row["optimizer"] for row in resumed["history"]] == ["gn"] * 3 + ["adam"] * 2


def test_the_global_random_stream_continues_too(data, tmp_path, monkeypatch):
    # no optimizer here draws from torch's global generator; one that did (dropout, noise)
    # must see the same draws after a resume
    from revgn.experiments import training
    plain_step = training.take_step

    def noisy_step(name, opt, model, xb, yb, loss):
        out = plain_step(name, opt, model, xb, yb, loss)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-3 * torch.randn(p.shape))
        return out
    monkeypatch.setattr(training, "take_step", noisy_step)
    spec = SPECS["sgd"]
    assert _without_seconds(_interrupted_then_resumed(spec, data, tmp_path, 1)) == \
        _without_seconds(run(spec, data))


def test_a_state_saved_under_other_settings_is_discarded(data, tmp_path, capsys):
    spec = SPECS["sgd"]
    path = str(tmp_path / "run.partial.pt")
    with pytest.raises(Interrupted):
        run(spec, data, progress=StopAfter(1),
            checkpoint=Checkpoint(path, dict(spec=spec.as_dict(), lr=1)), save_every=0)
    progress = Count()
    again = run(spec, data, progress=progress, save_every=0,
                checkpoint=Checkpoint(path, dict(spec=spec.as_dict(), lr=2)))
    assert "discarding run.partial.pt" in capsys.readouterr().err
    assert not any("resumed" in note for note in progress.notes)
    assert _without_seconds(again) == _without_seconds(run(spec, data))


def test_no_state_is_saved_before_save_every_seconds(data, tmp_path):
    spec = SPECS["sgd"]
    checkpoint = Checkpoint(str(tmp_path / "run.partial.pt"), dict(spec=spec.as_dict()))
    with pytest.raises(Interrupted):
        run(spec, data, progress=StopAfter(2), checkpoint=checkpoint, save_every=3600)
    assert not os.path.exists(checkpoint.path)


def test_run_jobs_hands_resumable_jobs_a_checkpoint_and_removes_it_when_done(tmp_path):
    seen = []

    def fn(progress, checkpoint):
        seen.append(checkpoint.load())
        checkpoint.save(dict(epoch=torch.tensor(1)))
        if len(seen) == 1:
            raise Interrupted
        return dict(history=[])

    job = Job("k", dict(x=1), fn, resumable=True)
    with pytest.raises(Interrupted):
        run_jobs([job], str(tmp_path), Count())
    assert (tmp_path / "runs" / "k.partial.pt").exists()
    run_jobs([job], str(tmp_path), Count())
    assert seen[0] is None and int(seen[1]["epoch"]) == 1
    assert not (tmp_path / "runs" / "k.partial.pt").exists()
    assert (tmp_path / "runs" / "k.json").exists()
