"""Faults lose nothing: one driver per study, resume checks the spec, a torn journal is repaired, unusable
places and impossible ranks are refused in one line, a full disk stops a study cleanly and resumable.

Real filesystems throughout (a read-only or tiny tmpfs where root may mount one, else a read-only folder),
real Optuna journals, real Ray and MLflow in the ``slow`` tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from raylora.errors import UserError, UserErrors
from raylora.spec import Spec

ROOT = Path(__file__).resolve().parents[1]

STUDY = {
    "study": {
        "name": "s",
        "num_trials": 2,
        "max_concurrent_trials": 1,
        "sampler": {"type": "random", "seed": 59},
        "scheduler": {"type": "fifo"},
    },
    "data": {"image": {"min_pixels": 4096, "max_pixels": 65536}, "max_length": 512, "eval_samples": 4},
    "resources": {"workers_per_trial": 1, "cpus_per_worker": 0.5},
    "training": {
        "max_steps": 4,
        "eval_every": 2,
        "per_device_train_batch_size": 2,
        "click_eval_samples": 0,
        "lora": {"scope": ["llm"]},
    },
    "search": {
        "training.lora.r": {"choice": [8, 4]},
        "training.learning_rate.llm": {"choice": [1.0e-2, 1.0e-7]},
    },
}


def _spec_dict(**sections) -> dict:
    spec = json.loads(json.dumps(STUDY))
    for key, value in sections.items():
        if isinstance(value, dict) and key in spec and key != "search":
            spec[key].update(value)
        else:
            spec[key] = value
    return spec


def _write_spec(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(_spec_dict(**sections), sort_keys=False))
    return path


def _raylora(
    *args: str, env: dict | None = None, timeout: int = 600, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "raylora", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def _one_line_exit(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The one error line of a run that must end with ``code`` and no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    """A tmpfs mounted at ``path`` (needs root); unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def _read_only(path: Path):
    """A read-only folder: a read-only tmpfs for root (whom permissions do not stop), else mode 0555."""
    if os.geteuid() == 0:
        with _tmpfs(path, "ro,size=1m"):
            yield path
        return
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)


# -- one driver per study -------------------------------------------------------------------------------


def test_a_second_driver_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    from raylora.layout import LOCK
    from raylora.study.lock import StudyLock
    from raylora.tracking.storage import LocalStorage

    storage = LocalStorage(tmp_path / "study")
    first = StudyLock(storage).acquire()
    held = json.loads((tmp_path / "study" / LOCK).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    with pytest.raises(UserError) as refused:
        StudyLock(storage).acquire()
    assert f"pid {os.getpid()} on {socket.gethostname()}" in str(refused.value)
    first.release()
    assert not (tmp_path / "study" / LOCK).exists()

    # A driver killed with SIGKILL leaves its lock behind: its pid is gone, so the lock is stale.
    gone = subprocess.Popen(["true"])
    gone.wait()
    held.update(pid=gone.pid, pid_start=None, expires=time.time() + 3600)
    (tmp_path / "study" / LOCK).write_text(json.dumps(held))
    taken = StudyLock(storage).acquire()
    assert json.loads((tmp_path / "study" / LOCK).read_text())["token"] == taken.token
    taken.release()

    # A holder on another host is stale only once its lease has expired.
    (tmp_path / "study" / LOCK).write_text(
        json.dumps({**held, "host": "elsewhere", "expires": time.time() + 60})
    )
    with pytest.raises(UserError, match="on elsewhere"):
        StudyLock(storage).acquire()
    (tmp_path / "study" / LOCK).write_text(
        json.dumps({**held, "host": "elsewhere", "expires": time.time() - 1})
    )
    StudyLock(storage).acquire().release()


def test_a_driver_reads_the_study_again_once_it_holds_the_lock(tmp_path):
    """What a driver read before it took the lock (while its Ray started) may be stale: another driver
    can have begun or finished the study meanwhile. Under the lock it reads again: a new study launched
    over one that now exists is refused, and nothing is written over the other driver's record."""
    from raylora.record.trials import StudyRecord, TrialRecord
    from raylora.study.driver import Plan, open_study, study_storage

    spec = Spec.from_dict(_spec_dict())
    where = study_storage(spec, str(tmp_path / "st"), log=lambda line: None)
    plan = Plan(where.directory, 2, [], 0, [], "fifo", storage=where, address=None)
    plan.record, plan.rebuild, plan.spec_checked = StudyRecord.open(where.directory, spec), False, False
    assert not plan.record.trials  # planned as a new study

    other = StudyRecord.open(where.directory, spec)  # another driver takes the study meanwhile
    other.trials["t000"] = TrialRecord("t000", optuna_number=0, steps=2, last_value=7.0)
    other.save()
    written = (where.directory / "summary.json").read_bytes()
    with pytest.raises(UserError, match="already exists"):
        open_study(spec, plan, resume=False, log=lambda line: None)
    assert (where.directory / "summary.json").read_bytes() == written


def test_on_object_storage_the_lock_is_a_lease_object(monkeypatch):
    from raylora.study import lock as lock_lib
    from raylora.tracking.storage import UriStorage

    monkeypatch.setattr(lock_lib, "SETTLE_S", 0.1)
    storage = UriStorage("mock:///root", "s")  # pyarrow's in-memory filesystem: no exclusive create either
    held = lock_lib.StudyLock(storage).acquire()
    with storage.filesystem.open_input_stream(f"{storage.fs_path}/{lock_lib.LOCK}") as f:
        lease = json.loads(f.read())
    assert lease["token"] == held.token and lease["expires"] > time.time() + 60
    with pytest.raises(UserError, match=f"pid {os.getpid()}"):
        lock_lib.StudyLock(storage).acquire()
    held.release()
    assert storage.filesystem.get_file_info(f"{storage.fs_path}/{lock_lib.LOCK}").type.name == "NotFound"
    lock_lib.StudyLock(storage).acquire().release()


# -- resume checks the spec -----------------------------------------------------------------------------


def test_resume_refuses_a_changed_space_objective_budget_or_data_and_allows_the_rest(tmp_path):
    from raylora.study import specfile

    data = tmp_path / "train.jsonl"
    data.write_text('{"x": 1}\n')
    base = _spec_dict(data={"train": str(data)})
    specfile.save(tmp_path, Spec.from_dict(base))

    allowed = _spec_dict(
        data={"train": str(data)},
        study={"num_trials": 9, "max_concurrent_trials": 2, "storage": "/elsewhere"},
        resources={"cpus_per_worker": 2.0},
        tracking={"tracking_uri": "http://127.0.0.1:5000"},
    )
    specfile.check(tmp_path, Spec.from_dict(allowed))

    changed = _spec_dict(
        data={"train": str(data)},
        study={"objective": {"metric": "eval/loss", "mode": "max"}},
        training={"max_steps": 20},
        search={
            "training.lora.r": {"choice": [8, 4]},
            "training.learning_rate.llm": {"loguniform": [1.0e-5, 1.0e-3]},
        },
    )
    with pytest.raises(UserErrors) as refused:
        specfile.check(tmp_path, Spec.from_dict(changed))
    lines = refused.value.lines()
    assert any(line.startswith('study.objective.mode: "min" → "max"') for line in lines), lines
    assert any(line.startswith("training.max_steps: 4 → 20") for line in lines), lines
    assert any(
        line.startswith("search.training.learning_rate.llm.choice: [0.01, 1e-07] → (unset)") for line in lines
    )
    assert any(
        line.startswith("search.training.learning_rate.llm.loguniform: (unset) → [1e-05, 0.001]")
        for line in lines
    )
    assert len(lines) == 4, lines

    data.write_text('{"x": 2}\n')  # same path, other contents
    with pytest.raises(UserError, match=r"^data.train: the file's contents changed"):
        specfile.check(tmp_path, Spec.from_dict(base))


# -- the journal repairs a torn tail --------------------------------------------------------------------


def _journal_with_trials(directory: Path, n: int = 2):
    from raylora.study.optuna_searcher import open_optuna

    spec = Spec.from_dict(_spec_dict())
    study = open_optuna(directory, spec)
    for i in range(n):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        study.tell(trial, float(i))
    return spec


@pytest.mark.parametrize("sampler", ["random", "tpe"])
@pytest.mark.parametrize("done", [1, 3])
def test_a_resumed_sampler_never_replays_the_draws_of_the_run_before(tmp_path, sampler, done):
    """A study reopened after ``done`` trials proposes anew: with a continuous parameter a replayed draw
    would repeat an earlier value exactly, as a fresh study with the same seed does."""
    from raylora.study.optuna_searcher import open_optuna

    spec = Spec.from_dict(
        _spec_dict(
            study={"sampler": {"type": sampler, "seed": 7}, "num_trials": 8},
            search={"training.learning_rate.llm": {"loguniform": [1.0e-5, 1.0e-2]}},
        )
    )

    def draw(study) -> float:
        trial = study.ask()
        value = trial.suggest_float("training.learning_rate.llm", 1.0e-5, 1.0e-2, log=True)
        study.tell(trial, value)
        return value

    study = open_optuna(tmp_path / "a", spec)
    first = [draw(study) for _ in range(done)]
    resumed = open_optuna(tmp_path / "a", spec)
    later = [draw(resumed) for _ in range(3)]
    fresh = open_optuna(tmp_path / "b", spec)
    assert draw(fresh) == first[0], "a fresh study with the same seed repeats its draws"
    assert not set(later) & set(first), (first, later)


def test_a_torn_last_journal_record_is_dropped_with_a_warning_and_corruption_elsewhere_names_the_line(
    tmp_path,
):
    from raylora.study.optuna_searcher import open_optuna

    spec = _journal_with_trials(tmp_path)
    journal = tmp_path / "optuna.journal"
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 4, "worker_id": "ab')  # a process killed mid-append
    said: list[str] = []
    study = open_optuna(tmp_path, spec, said.append)
    assert (
        len(said) == 1
        and said[0].startswith("warning: dropped a torn last record")
        and str(journal) in said[0]
    )
    assert journal.read_bytes().startswith(whole + b"{")  # what Optuna appended follows the last whole line
    trial = study.ask()  # appending works, and every later reader reads the whole journal
    trial.suggest_float("x", 0, 1)
    study.tell(trial, 5.0)
    again = open_optuna(tmp_path, spec, said.append)
    assert [t.value for t in again.get_trials()] == [0.0, 1.0, 5.0] and len(said) == 1

    lines = journal.read_bytes().split(b"\n")
    lines[2] = b'{"op_code": 1, "broken'
    journal.write_bytes(b"\n".join(lines))
    with pytest.raises(UserError) as corrupt:
        open_optuna(tmp_path, spec, said.append)
    assert str(corrupt.value).startswith(f"{journal}:3: not an Optuna journal record")


def test_a_resume_with_another_spec_or_a_corrupt_journal_is_refused_before_ray_starts(
    tmp_path, monkeypatch, raylora_cli
):
    """A study with a trial left to run (its spec.json and journal as a first run leaves them): a resume
    with another spec, or of a journal corrupt before its last line, ends in one line without starting
    Ray, and writes nothing."""
    from raylora.study import cluster, specfile

    def tripwire(address):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(cluster, "init_ray", tripwire)

    storage = tmp_path / "st"
    study_dir = storage / "s"
    _journal_with_trials(study_dir, n=1)  # one of the spec's 2 trials finished
    specfile.save(study_dir, Spec.from_dict(_spec_dict()))
    before = {p.name: p.read_bytes() for p in study_dir.iterdir()}
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"

    changed = _write_spec(tmp_path / "changed.yaml", training={"max_steps": 20})
    code, out, err = raylora_cli(
        "search", str(changed), "--storage", str(storage), "--tracking-uri", tracking, "--resume"
    )
    assert code == 2 and err.startswith("error: training.max_steps: 4 → 20"), err
    assert err.count("\n") == 1 and "starting Ray" not in out, (out, err)

    journal = study_dir / "optuna.journal"
    lines = journal.read_bytes().split(b"\n")
    lines[1] = b"garbage"
    journal.write_bytes(b"\n".join(lines))
    before["optuna.journal"] = journal.read_bytes()
    same = _write_spec(tmp_path / "same.yaml")
    code, out, err = raylora_cli(
        "search", str(same), "--storage", str(storage), "--tracking-uri", tracking, "--resume"
    )
    assert code == 2 and err.startswith(f"error: {journal}:2: not an Optuna journal record"), err
    assert "starting Ray" not in out, out
    assert {p.name: p.read_bytes() for p in study_dir.iterdir()} == before
    assert not (tmp_path / "mlflow.db").exists()


# -- clean refusals for unusable places and impossible ranks --------------------------------------------


def test_unusable_storage_tracking_store_or_rank_exits_2_in_one_line_even_under_dry_run(
    tmp_path, raylora_cli
):
    def refused(*args: str) -> str:
        code, out, err = raylora_cli("search", *args)
        return _one_line_exit(subprocess.CompletedProcess(args, code, out, err), 2)

    spec = _write_spec(tmp_path / "study.yaml")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    line = refused(str(spec), "--storage", str(a_file), "--tracking-uri", tracking, "--dry-run")
    assert "--storage" in line and "is a file" in line, line

    with _read_only(tmp_path / "ro") as ro:
        line = refused(str(spec), "--storage", str(ro), "--tracking-uri", tracking, "--dry-run")
        assert line.startswith("error: --storage") and f"cannot write in {ro}" in line, line
        line = refused(str(spec), "--storage", str(tmp_path / "st"), "--tracking-uri", f"sqlite:///{ro}/m.db")
        assert line.startswith("error: --tracking-uri") and f"cannot write in {ro}" in line, line

    line = refused(str(spec), "--storage", str(tmp_path / "st"), "--tracking-uri", "nosuch://x/y")
    assert line.startswith("error: --tracking-uri") and "unknown scheme 'nosuch'" in line, line

    args = ("--storage", str(tmp_path / "st"), "--tracking-uri", tracking, "--dry-run")
    fixed = _write_spec(tmp_path / "fixed.yaml", search={})
    line = refused(str(fixed), "--set", "training.lora.r=4096", *args)
    assert "training.lora.r: rank 4096" in line and "the widest sensible rank is 32" in line, line
    big = _write_spec(tmp_path / "big.yaml", search={"training.lora.r": {"choice": [8, 64]}})
    line = refused(str(big), *args)
    assert "search.training.lora.r: rank 64" in line and "the widest sensible rank is 32" in line, line
    assert not (tmp_path / "st").exists() and not (tmp_path / "mlflow.db").exists(), "nothing was made"


# -- study level: real Ray, real Optuna journal, real MLflow --------------------------------------------


def _search_args(spec: Path, storage: Path, *args: str) -> list[str]:
    return [
        "search",
        str(spec),
        "--storage",
        str(storage),
        "--tracking-uri",
        f"sqlite:///{storage}/mlflow.db",
        *args,
    ]


def _summary(study_dir: Path) -> dict:
    return json.loads((study_dir / "summary.json").read_text())


def _assert_adapters_exist(summary: dict) -> None:
    for trial in summary["trials"]:
        if trial["state"] in ("COMPLETE", "PRUNED"):
            assert (Path(trial["adapter_path"]) / "adapter_model.safetensors").is_file(), trial


@pytest.mark.slow
def test_one_driver_resume_checks_the_spec_torn_journal_and_unreadable_summary(tmp_path):
    """Two launches of one study, then a resume with another spec, a torn journal tail, a dead driver's
    lock, an unreadable summary.json and a corrupt journal line: each either completes the study with
    exactly its trials or ends in one line with exit 2. The resumes run from another folder than the
    first launch, on the default MLflow store: one store, beside the storage, whichever the folder."""
    spec = _write_spec(tmp_path / "study.yaml", training={"max_steps": 20, "eval_every": 10})
    storage, study_dir = tmp_path / "st", tmp_path / "st" / "s"
    first_cwd, cwd = tmp_path / "a", tmp_path / "b"
    first_cwd.mkdir(), cwd.mkdir()
    env = {"MLFLOW_TRACKING_URI": ""}

    def search(path: Path, *args: str) -> subprocess.CompletedProcess:
        return _raylora("search", str(path), "--storage", str(storage), *args, env=env, cwd=cwd)

    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(
        [sys.executable, "-m", "raylora", "search", str(spec), "--storage", str(storage)],
        cwd=first_cwd,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (study_dir / "driver.lock").is_file():
            assert time.monotonic() < deadline and first.poll() is None, (tmp_path / "first.log").read_text()
            time.sleep(0.2)
        second = search(spec, "--resume")
        _one_line_exit(second, 2, f"already being run by pid {first.pid} on {socket.gethostname()}")
        assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, 9)
            first.wait()
    done = _summary(study_dir)
    assert [t["state"] for t in done["trials"]] == ["COMPLETE", "COMPLETE"], done
    assert not (study_dir / "driver.lock").exists()

    changed = _write_spec(
        tmp_path / "changed.yaml",
        study={"num_trials": 3},  # allowed
        training={"max_steps": 10, "eval_every": 10},
        search={"training.lora.r": {"choice": [8, 4, 2]}, "training.learning_rate.llm": {"choice": [1.0e-2]}},
    )
    proc = search(changed, "--resume")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert [line.split(":")[1].strip() for line in lines] == [
        "search.training.learning_rate.llm.choice",
        "search.training.lora.r.choice",
        "training.max_steps",
    ], lines
    assert "error: training.max_steps: 20 → 10" in proc.stderr

    # A driver killed mid-append (torn journal tail) and with its lock left behind; then one more trial.
    journal = study_dir / "optuna.journal"
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 5, "worker_id": "x", "trial_id": 1, "sta')
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock = {"host": socket.gethostname(), "pid": gone.pid, "started": "earlier", "token": "x", "expires": 0}
    (study_dir / "driver.lock").write_text(json.dumps(lock))
    more = _write_spec(
        tmp_path / "more.yaml", study={"num_trials": 3}, training={"max_steps": 20, "eval_every": 10}
    )
    proc = search(more, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if "warning" in line]
    assert [w.split(" at line")[0] for w in warnings] == [
        f"warning: dropped a torn last record (52 bytes) of {journal}"
    ], warnings
    uri = f"sqlite:///{storage / 'mlflow.db'}"
    assert json.loads((study_dir / "spec.json").read_text())["tracking_uri"] == uri
    assert not list(first_cwd.iterdir()) and not list(cwd.iterdir()), "nothing is made where it ran"
    from mlflow import MlflowClient

    experiment = MlflowClient(uri).get_experiment_by_name("s")
    roles = [r.data.tags["raylora.role"] for r in MlflowClient(uri).search_runs([experiment.experiment_id])]
    assert sorted(roles) == ["study", "trial", "trial", "trial"]
    summary = _summary(study_dir)
    assert [t["state"] for t in summary["trials"]] == ["COMPLETE"] * 3, summary
    assert summary["trials"][:2] == done["trials"], "the finished trials are untouched"
    _assert_adapters_exist(summary)
    import optuna

    trials = optuna.load_study(
        study_name="s",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))),
    ).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3

    # An unreadable summary.json is rebuilt from the journal and the checkpoints.
    (study_dir / "summary.json").write_text('{"study": "s", "trials": [{"trial_')
    proc = search(more, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "did not parse; rebuilt it from optuna.journal" in proc.stdout + proc.stderr
    assert "starting Ray" not in proc.stdout + proc.stderr, "no trial is left: Ray is not started"
    rebuilt = _summary(study_dir)
    keys = ("trial_id", "state", "params", "value", "steps", "adapter_path")
    assert [{k: t[k] for k in keys} for t in rebuilt["trials"]] == [
        {k: t[k] for k in keys} for t in summary["trials"]
    ]
    assert rebuilt["best_trial"]["trial_id"] == summary["best_trial"]["trial_id"]
    (study_dir / "summary.json").write_text('{"study": "s", "trials": [{"tri')  # `report` rebuilds it too
    proc = _raylora("report", str(study_dir), env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "did not parse; rebuilt it from optuna.journal" in proc.stdout + proc.stderr
    assert [{k: t[k] for k in keys} for t in _summary(study_dir)["trials"]] == [
        {k: t[k] for k in keys} for t in summary["trials"]
    ]

    # Corruption before the last line cannot be repaired: one line naming the file and line.
    lines = journal.read_bytes().split(b"\n")
    lines[1] = b"garbage"
    journal.write_bytes(b"\n".join(lines))
    proc = search(more, "--resume")
    _one_line_exit(proc, 2, f"{journal}:2: not an Optuna journal record")


@pytest.mark.slow
def test_a_full_disk_stops_the_study_in_one_line_and_resume_completes_it(tmp_path):
    """ENOSPC mid-study (a real 64 MiB tmpfs filled up): exit 1 naming the path and the OS error, no
    trial is given a verdict, and --resume after space is freed (summary.json torn) completes every
    trial, the interrupted one from its checkpoint."""
    spec = _write_spec(tmp_path / "study.yaml", training={"max_steps": 30})
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with _tmpfs(tmp_path / "disk", "size=64m") as disk:
        study_dir = disk / "s"
        args = ["search", str(spec), "--storage", str(disk), "--tracking-uri", tracking]
        driver = subprocess.Popen(
            [sys.executable, "-m", "raylora", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            while not (
                (study_dir / "summary.json").is_file() and _summary(study_dir)["trials"][0]["steps"] >= 4
            ):
                assert time.monotonic() < deadline and driver.poll() is None, driver.stderr.read()[-3000:]
                time.sleep(0.1)
            filler = disk / "filler"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
            out, err = driver.communicate(timeout=300)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, 9)
                driver.wait()
        line = _one_line_exit(
            subprocess.CompletedProcess(driver.args, driver.returncode, out, err),
            1,
            "No space left on device",
        )
        assert str(disk) in line and "--resume" in line, line
        trials = _summary(study_dir)["trials"]
        assert trials[0]["state"] == "RUNNING", trials  # not a verdict: resumable
        assert not (study_dir / "driver.lock").exists()

        filler.unlink()
        # The disk filled as summary.json was written: the resume rebuilds it from the journal, and only
        # then knows trials are left (Ray starts after the rebuild).
        (study_dir / "summary.json").write_text('{"study": "s", "trials": [{"trial_id": "t0')
        proc = _raylora(*args, "--resume")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "did not parse; rebuilt it from optuna.journal" in proc.stdout + proc.stderr
        summary = _summary(study_dir)
        assert [t["state"] for t in summary["trials"]] == ["COMPLETE", "COMPLETE"], summary
        assert summary["trials"][0]["resumed_from_step"] >= 2
        _assert_adapters_exist(summary)


@pytest.mark.slow
def test_every_trial_failed_exits_1_and_report_sends_pending_records_to_another_store(tmp_path):
    spec = _write_spec(tmp_path / "study.yaml", study={"num_trials": 1}, training={"max_steps": 2})
    storage = tmp_path / "st"
    dead = "http://127.0.0.1:9"  # nothing listens: every MLflow record waits in mlflow_pending.json
    proc = _raylora(
        "search", str(spec), "--storage", str(storage), "--tracking-uri", dead,
        env={"RAYLORA_INJECT_ERROR": "training.max_steps=2"},
    )  # fmt: skip
    _one_line_exit(
        proc, 1, "every trial failed; the first, t000: RuntimeError: injected by RAYLORA_INJECT_ERROR"
    )
    assert (storage / "s" / "mlflow_pending.json").is_file()

    new = f"sqlite:///{tmp_path / 'new.db'}"
    proc = _raylora("report", str(storage / "s"), "--tracking-uri", new)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (storage / "s" / "mlflow_pending.json").exists()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=new)
    experiment = client.get_experiment_by_name("s")
    runs = client.search_runs([experiment.experiment_id])
    trials = {r.data.tags["raylora.trial_id"]: r for r in runs if r.data.tags.get("raylora.role") == "trial"}
    assert sorted(trials) == ["t000"]
    assert trials["t000"].data.tags["raylora.state"] == "FAILED"


def _stop_at_step(args: list[str], study_dir: Path, step: int, sig: int, group: bool) -> tuple[int, str]:
    """Launch ``raylora *args`` and, once the first trial has reported ``step``, send ``sig`` to the driver
    alone (as a terminal's Ctrl-C, or Kubernetes' and docker's stop, reaches it) or, with ``group``, to
    its whole process group (a terminal's job control, a process supervisor); its exit code and stderr."""
    driver = subprocess.Popen(
        [sys.executable, "-m", "raylora", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (
            (study_dir / "summary.json").is_file() and _summary(study_dir)["trials"][0]["steps"] >= step
        ):
            assert time.monotonic() < deadline and driver.poll() is None, driver.stderr.read()[-3000:]
            time.sleep(0.1)
        if group:
            os.killpg(driver.pid, sig)
        else:
            driver.send_signal(sig)
        _, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, 9)
            driver.wait()
    assert "Traceback" not in err, err[-3000:]
    return driver.returncode, err


@pytest.mark.slow
def test_sigterm_ctrl_c_and_a_group_sigterm_stop_the_workers_and_resumes_keep_only_the_adapters_history(
    tmp_path,
):
    """SIGTERM to the driver alone stops the study as Ctrl-C does (exit 143 against 130), and so does
    SIGTERM to its whole process group, workers included. Each stop leaves the trial unfinished with a
    checkpoint that exists. A resume never trusts a checkpoint a power loss emptied (it resumes from the
    one before), and the last resume gives every evaluation once."""
    import signal

    # objective max on eval/loss: the best checkpoint is the first, so two are kept (the best and the
    # latest), and an emptied latest one leaves an earlier one to resume from
    spec = _write_spec(
        tmp_path / "study.yaml",
        study={"num_trials": 1, "objective": {"metric": "eval/loss", "mode": "max"}},
        training={"max_steps": 32, "eval_every": 2, "learning_rate": {"llm": 1.0e-2}},
    )
    storage, study_dir = tmp_path / "st", tmp_path / "st" / "s"
    args = _search_args(spec, storage)

    def checkpoints() -> list[Path]:
        return sorted((study_dir / "runs" / "t000").glob("checkpoint_s*"))

    def step_of(checkpoint: Path) -> int:
        return int(checkpoint.name.removeprefix("checkpoint_s"))

    for sig, code, said, resume, group in (
        (signal.SIGTERM, 143, "terminated", [], False),
        (signal.SIGINT, 130, "interrupted", ["--resume"], False),
        (signal.SIGTERM, 143, "terminated", ["--resume"], True),
    ):
        step = 4
        if resume:  # a resume replays the reports up to its checkpoint first: stop it 4 steps after that
            step = step_of(checkpoints()[-1]) + 4
        returncode, err = _stop_at_step([*args, *resume], study_dir, step, sig, group)
        assert returncode == code, err[-3000:]
        assert f"{said}: t000 unfinished; continue the study with --resume" in err, err[-3000:]
        assert not (study_dir / "driver.lock").exists()
        assert (study_dir / "report" / "leaderboard.md").is_file()
        trial = _summary(study_dir)["trials"][0]
        assert (
            trial["state"] == "RUNNING"
            and (Path(trial["adapter_path"]) / "adapter_model.safetensors").is_file()
        ), trial
        if resume:
            assert trial["resumed_from_step"] >= 4, trial
    saved, recorded = checkpoints(), trial["steps"]  # the last step the driver took in before the stop
    assert len(saved) == 2 and step_of(saved[-1]) < 32, saved  # the best and the latest, before the end

    for file in (saved[-1] / "adapter").iterdir():  # a power loss: the names are there, the bytes are not
        file.write_bytes(b"")
    proc = _raylora(*args, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"discarded checkpoint(s) {saved[-1].name} (adapter/" in proc.stdout, proc.stdout[-3000:]
    summary = _summary(study_dir)
    (trial,) = summary["trials"]
    assert trial["state"] == "COMPLETE" and trial["resumed_from_step"] == step_of(saved[0]), trial
    _assert_adapters_exist(summary)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage}/mlflow.db")
    experiment = client.get_experiment_by_name("s")
    (run,) = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("raylora.role") == "trial"
    ]
    history = client.get_metric_history(run.info.run_id, "eval/loss")
    assert sorted({m.step for m in history}) == list(range(2, 33, 2)), history  # every evaluation
    # MLflow deletes no metric: the steps recorded before the stop and trained again after the emptied
    # checkpoint hold two values, the later one the adapter's; every other step holds one (the stops'
    # replays were sent once).
    steps = [m.step for m in history]
    twice = sorted(step for step in set(steps) if steps.count(step) > 1)
    assert twice == list(range(step_of(saved[0]) + 2, recorded + 1, 2)), (twice, saved, recorded)
    latest = {}
    for m in sorted(history, key=lambda m: m.timestamp):
        latest[m.step] = m.value
    # The trial's record holds the adapter's history alone: no value of the passed-over evaluations.
    assert {int(k): v for k, v in trial["curve"].items()} == pytest.approx(latest), trial["curve"]
    assert trial["value"] == max(latest.values()), trial  # objective max
    assert run.data.metrics["best_eval/loss"] == pytest.approx(min(latest.values()))  # MLflow's min
