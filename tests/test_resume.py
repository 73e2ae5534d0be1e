"""A run interrupted midway continues from its saved state exactly as if it had not stopped: the
same history (all but the seconds) and batch losses."""
import json
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
    # as JSON text, so that NaN losses compare equal to NaN losses
    return json.dumps(dict(result, history=[{k: v for k, v in row.items() if k != "seconds"}
                                            for row in result["history"]]), sort_keys=True)


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
    "gd-eval-every-2": RunSpec("gd", 0.5, seed=3, epochs=4, model=dict(bottleneck=20),
                               eval_every=2),
    "gn-full-batch-reanchoring": RunSpec(  # drift_tol 0: every step re-anchors the stream
        "gn", 0.5, seed=4, epochs=3, model=dict(bottleneck=20, depth=4),
        options=dict(drift_tol=0.0, noise=0.05)),
    "egn-line-search-momentum-adaptive": RunSpec(
        "egn", 1.0, seed=1, epochs=3, batch_size=50, model=dict(arch="mlp", width=16),
        options=dict(line_search=True, alpha_max=8.0, momentum=0.9, adaptive_damping=True)),
    "sgn-line-search-momentum": RunSpec(
        "sgn", 1.0, seed=2, epochs=3, batch_size=50, model=dict(arch="mlp", width=16),
        options=dict(cg_iters=5, line_search=True, momentum=0.9)),
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


def test_a_run_stopped_mid_epoch_continues_after_its_last_saved_epoch(data, tmp_path,
                                                                      monkeypatch):
    from revgn.experiments import training
    spec = SPECS["egn-line-search-momentum-adaptive"]  # 3 steps an epoch
    straight = run(spec, data)
    plain_step, calls = training.take_step, []

    def failing_step(*args):
        calls.append(1)
        if len(calls) == 1 + 3 + 2:  # the warm-up, epoch 1, two steps into epoch 2
            raise Interrupted
        return plain_step(*args)
    monkeypatch.setattr(training, "take_step", failing_step)
    checkpoint = Checkpoint(str(tmp_path / "run.partial.pt"), dict(spec=spec.as_dict()))
    with pytest.raises(Interrupted):
        run(spec, data, checkpoint=checkpoint, save_every=0)
    monkeypatch.setattr(training, "take_step", plain_step)
    progress = Count()
    resumed = run(spec, data, progress=progress, checkpoint=checkpoint, save_every=0)
    assert "resumed after epoch 1" in progress.notes[0]
    assert _without_seconds(resumed) == _without_seconds(straight)


def test_the_warm_up_of_a_resumed_run_is_on_the_initial_model(data, tmp_path):
    # the step after the switch diverges; a warm-up GN step on the saved (non-finite) model
    # would raise where the uninterrupted run goes on
    spec = RunSpec("gn", 0.1, seed=5, epochs=4, batch_size=50, model=dict(bottleneck=20),
                   then=RunSpec("sgd", 1e8, batch_size=50), switch_epoch=1)
    straight = run(spec, data)
    assert any(row["train_loss"] != row["train_loss"] for row in straight["history"])  # NaN
    resumed = _interrupted_then_resumed(spec, data, tmp_path, 3)
    assert _without_seconds(resumed) == _without_seconds(straight)


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


def test_an_unreadable_state_is_discarded_and_the_run_starts_afresh(data, tmp_path, capsys):
    spec = SPECS["sgd"]
    path = tmp_path / "run.partial.pt"
    path.write_bytes(b"not a saved state")
    progress = Count()
    again = run(spec, data, progress=progress, save_every=3600,
                checkpoint=Checkpoint(str(path), dict(spec=spec.as_dict())))
    assert "discarding run.partial.pt: unreadable" in capsys.readouterr().err
    assert not path.exists() and progress.done == spec.epochs
    assert _without_seconds(again) == _without_seconds(run(spec, data))


def test_a_failed_save_keeps_the_previous_state_and_leaves_no_temporary_file(tmp_path,
                                                                           monkeypatch):
    checkpoint = Checkpoint(str(tmp_path / "run.partial.pt"), dict(x=1))
    checkpoint.save(dict(epoch=1))

    def full_disk(obj, f):
        f.write(b"half")
        raise OSError("no space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        checkpoint.save(dict(epoch=2))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.partial.pt"]
    assert checkpoint.load() == dict(epoch=1)


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
    # a state left by an interruption between writing the run and removing the state goes on
    # the next pass, which reuses the run
    (tmp_path / "runs" / "k.partial.pt").write_bytes(b"stale")
    run_jobs([job], str(tmp_path), Count())
    assert not (tmp_path / "runs" / "k.partial.pt").exists() and len(seen) == 2
