"""Fleet operations: artifacts (files, manifests, wrong hashes), targets, listings and bad input."""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.fleet.cli import fleet_group
from collector.fleet.operations import (
    DeviceProgress,
    FleetError,
    apply_event,
    build_job,
    collect_artifacts,
    list_devices,
    list_jobs,
    resolve_target,
    sign,
)
from collector.store.sqlite import insert_results, open_db, record_job, upsert_device
from testkit.records import make_record, make_status
from wire.artifacts import file_sha256
from wire.manifest import (
    Fidelity,
    Manifest,
    ManifestArtifact,
    SourceInfo,
    ValidationInfo,
    write_manifest,
)
from wire.schema import BenchSettings, JobEvent


def make_manifest(directory: Path, models: list[Path]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    arts = []
    for m in models:
        shutil.copy(m, directory / m.name)
        data = m.read_bytes()
        arts.append(
            ManifestArtifact(
                name=m.name, file=m.name, sha256=file_sha256(m), size_bytes=len(data),
                gzip_bytes=len(gzip.compress(data)), format=m.suffix[1:], precision="fp32",
                variant=f"{m.suffix[1:]}-fp32", model="tiny_mlp", fidelity=Fidelity(accuracy_delta=-0.1),
            )
        )  # fmt: skip
    manifest = Manifest(
        source=SourceInfo(name="tiny_mlp", path="x", sha256="0" * 64, format="onnx"),
        validation=ValidationInfo(dataset="random", n=8, has_labels=False),
        max_accuracy_drop=1.0,
        artifacts=tuple(arts),
    )
    return write_manifest(manifest, directory / "manifest.json")


def test_artifacts_from_files_and_manifest(tmp_path, tiny_mlp_onnx, tiny_mlp_tflite):
    from_files = collect_artifacts([tiny_mlp_onnx, tiny_mlp_tflite, tiny_mlp_onnx])
    assert [a.ref.format for a in from_files] == ["onnx", "tflite"]  # de-duplicated by sha256
    assert from_files[0].ref.sha256 == file_sha256(tiny_mlp_onnx)
    manifest = make_manifest(tmp_path / "out", [tiny_mlp_onnx, tiny_mlp_tflite])
    for given in (manifest, manifest.parent):
        items = collect_artifacts([given])
        assert {a.ref.name for a in items} == {tiny_mlp_onnx.name, tiny_mlp_tflite.name}
        assert all(a.fidelity and a.fidelity["accuracy_delta"] == -0.1 for a in items)
        assert all(a.ref.model == "tiny_mlp" for a in items)


def test_manifest_with_wrong_hash_is_refused(tmp_path, tiny_mlp_onnx):
    manifest = make_manifest(tmp_path / "out", [tiny_mlp_onnx])
    data = json.loads(manifest.read_text())
    data["artifacts"][0]["sha256"] = "f" * 64
    manifest.write_text(json.dumps(data))
    with pytest.raises(FleetError, match=r"sha256 mismatch.*refusing"):
        collect_artifacts([manifest])
    # and a tampered file under a correct manifest
    manifest = make_manifest(tmp_path / "out2", [tiny_mlp_onnx])
    with open(manifest.parent / tiny_mlp_onnx.name, "ab") as fh:
        fh.write(b"\x00")
    with pytest.raises(FleetError, match="sha256 mismatch"):
        collect_artifacts([manifest])


def test_not_an_artifact_is_refused(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_text("hello, I am not a model")
    with pytest.raises(FleetError, match="not an ONNX model"):
        collect_artifacts([fake])
    fake_tfl = tmp_path / "model.tflite"
    fake_tfl.write_bytes(b"\x00" * 64)
    with pytest.raises(FleetError, match="not a TFLite"):
        collect_artifacts([fake_tfl])
    txt = tmp_path / "notes.txt"
    txt.write_text("x")
    with pytest.raises(FleetError, match="unsupported model extension"):
        collect_artifacts([txt])
    with pytest.raises(FleetError, match="no such file"):
        collect_artifacts([tmp_path / "missing.onnx"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FleetError, match="cannot read manifest"):
        collect_artifacts([tmp_path / "empty"])


def test_targets(db_path):
    db = open_db(db_path)
    with pytest.raises(FleetError, match="no device has registered"):
        resolve_target(db, "all")
    upsert_device(db, make_status("pi-a", tags=("lab", "pi4")))
    upsert_device(db, make_status("pi-b", tags=("pi5",)))
    assert resolve_target(db, "all") == ("all", ["pi-a", "pi-b"])
    assert resolve_target(db, "tag:pi4") == ("tag:pi4", ["pi-a"])
    assert resolve_target(db, "pi-b") == ("device:pi-b", ["pi-b"])
    assert resolve_target(db, "device:pi-a") == ("device:pi-a", ["pi-a"])
    with pytest.raises(FleetError, match=r"no device has the tag 'x5' \(tags in use: lab, pi4, pi5\)"):
        resolve_target(db, "tag:x5")
    with pytest.raises(FleetError, match="unknown device 'pi-z'"):
        resolve_target(db, "pi-z")
    for hostile in ("pi-a' OR '1'='1", 'x"; DROP TABLE devices; --', "a/b", "+", "tag:a b"):
        with pytest.raises(FleetError, match="invalid"):
            resolve_target(db, hostile)
    assert db["devices"].count == 2


def test_job_signing_and_progress(tmp_path, tiny_mlp_onnx):
    from wire.signing import generate_keypair, load_trusted_keys, verify

    items = collect_artifacts([tiny_mlp_onnx])
    job = build_job(items, "tag:lab", BenchSettings(preset="quick", threads=(1, 2)))
    with pytest.raises(FleetError, match="no signing key"):
        sign(job, tmp_path / "nope.key")
    key, pub = generate_keypair(tmp_path / "keys", "collector")
    signed = sign(job, key)
    verify(signed, load_trusted_keys([pub]))
    progress = {"pi-a": DeviceProgress("pi-a")}
    apply_event(progress, JobEvent(job.job_id, "pi-a", "fetching", "t", progress=0.5))
    assert progress["pi-a"].state == "transferring"
    apply_event(progress, JobEvent(job.job_id, "pi-a", "done", "t", result_ids=("x",)))
    apply_event(progress, JobEvent(job.job_id, "pi-a", "running", "t"))  # late
    assert progress["pi-a"].state == "done" and progress["pi-a"].results == 1
    apply_event(progress, JobEvent(job.job_id, "pi-b", "rejected", "t", detail="bad signature"))
    assert progress["pi-b"].state == "failed"


def test_listings_and_cli_bad_input(db_path, tmp_path, tiny_mlp_onnx):
    runner = CliRunner()
    missing = runner.invoke(fleet_group, ["devices", "--db", str(tmp_path / "none.db")])
    assert missing.exit_code == 1 and "no database" in missing.output
    db = open_db(db_path)
    empty = runner.invoke(fleet_group, ["devices", "--db", str(db_path)])
    assert empty.exit_code == 0 and "no devices yet" in empty.output
    upsert_device(db, replace(make_status("pi-a", tags=("lab",)), outbox_pending=7))
    insert_results(db, [make_record("pi-a") for _ in range(3)] + [make_record("ghost")])
    rows = {r.device_id: r for r in list_devices(db)}
    assert rows["pi-a"].results == 3 and rows["pi-a"].online and rows["pi-a"].tags == ("lab",)
    assert rows["pi-a"].outbox_pending == 7 and rows["ghost"].outbox_pending is None
    assert rows["ghost"].results == 1 and not rows["ghost"].online
    out = runner.invoke(fleet_group, ["devices", "--db", str(db_path)])
    assert out.exit_code == 0 and "pi-a" in out.output and "lab" in out.output and "PENDING" in out.output
    assert out.output.splitlines()[1].split()[-2] == "7"  # pi-a: PENDING, before JOB
    job = build_job(collect_artifacts([tiny_mlp_onnx]), "all", BenchSettings())
    record_job(db, job)
    from collector.store.sqlite import insert_job_events

    insert_job_events(
        db, [JobEvent(job.job_id, "pi-a", "running", "t1"), JobEvent(job.job_id, "pi-a", "done", "t2")]
    )
    [row] = list_jobs(db)
    assert row.devices == {"pi-a": "done"} and row.artifacts == (tiny_mlp_onnx.name,)
    out = runner.invoke(fleet_group, ["jobs", "--db", str(db_path)])
    assert out.exit_code == 0 and job.job_id[:8] in out.output and "pi-a:done" in out.output
    # push: every user mistake is one clear line, no traceback
    key = tmp_path / "k.key"
    cases = [
        (["push", str(tiny_mlp_onnx), "--to", "pi-zz"], "unknown device 'pi-zz'"),
        (["push", str(tiny_mlp_onnx), "--to", "tag:nope"], "no device has the tag 'nope'"),
        (["push", str(tiny_mlp_onnx), "--to", "x' OR 1=1 --"], "invalid device id"),
        (["push", str(tmp_path / "nothing.onnx"), "--to", "pi-a"], "no such file"),
        (["push", str(tiny_mlp_onnx), "--to", "pi-a", "--threads", "a,b"], "comma list of integers"),
        (["push", str(tiny_mlp_onnx), "--to", "pi-a", "--key", str(key)], "no signing key"),
    ]
    for args, message in cases:
        result = runner.invoke(fleet_group, [*args, "--db", str(db_path)])
        assert result.exit_code != 0, args
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_push_to_an_offline_device_times_out_clearly(mosquitto, db_path, tmp_path, tiny_mlp_onnx):
    from wire.signing import generate_keypair

    key, _ = generate_keypair(tmp_path / "keys", "collector")
    db = open_db(db_path)
    upsert_device(db, make_status("pi-away", state="offline", reason="last-will"))
    result = CliRunner().invoke(
        fleet_group,
        ["push", str(tiny_mlp_onnx), "--to", "pi-away", "--db", str(db_path), "--key", str(key),
         "--broker", f"{mosquitto.host}:{mosquitto.port}", "--timeout", "1"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "pi-away" in result.output and "queued" in result.output
    assert "timed out after 1 s waiting for pi-away" in result.output
    [job] = list_jobs(db)
    assert job.state == "timeout" and job.target == "device:pi-away"
    unreachable = CliRunner().invoke(
        fleet_group,
        ["push", str(tiny_mlp_onnx), "--to", "pi-away", "--db", str(db_path), "--key", str(key),
         "--broker", "127.0.0.1:1"],
    )  # fmt: skip
    assert unreachable.exit_code == 1 and "cannot reach the broker at 127.0.0.1:1" in unreachable.output


def test_job_and_device_states_follow_the_events_as_they_arrive(db_path, tiny_mlp_onnx):
    """`fleet jobs` / `fleet devices` read the job events (stored by ingest as they come in), not only
    what a waiting push records at its end or what the 30 s heartbeats say."""
    from collector.store.sqlite import insert_job_events

    db = open_db(db_path)
    for device in ("pi-a", "pi-b"):  # heartbeats at t0: no current job
        upsert_device(db, make_status(device, at="2025-01-01T00:00:00.000Z", tags=("lab",)))
    upsert_device(db, make_status("pi-x", at="2025-01-01T00:00:00.000Z", tags=("field",)))
    job = build_job(collect_artifacts([tiny_mlp_onnx]), "tag:lab", BenchSettings())
    record_job(db, job)  # what `fleet push --no-wait` leaves: published

    def state() -> tuple[str, dict[str, str], dict[str, str]]:
        [row] = list_jobs(db)
        return row.state, row.devices, {r.device_id: r.current_job for r in list_devices(db)}

    def event(device: str, what: str, at: str) -> None:
        insert_job_events(db, [JobEvent(job.job_id, device, what, at)])

    assert state() == ("published", {}, {"pi-a": "", "pi-b": "", "pi-x": ""})
    event("pi-a", "received", "2025-01-01T00:00:01.000Z")
    assert state() == ("running", {"pi-a": "received"}, {"pi-a": job.job_id, "pi-b": "", "pi-x": ""})
    event("pi-a", "done", "2025-01-01T00:00:05.000Z")
    event("pi-b", "running", "2025-01-01T00:00:05.000Z")
    assert state() == (
        "running",
        {"pi-a": "done", "pi-b": "running"},
        {"pi-a": "", "pi-b": job.job_id, "pi-x": ""},
    )
    event("pi-a", "running", "2025-01-01T00:00:04.000Z")  # late, reordered: the final word stays
    event("pi-b", "done", "2025-01-01T00:00:09.000Z")
    assert state() == ("done", {"pi-a": "done", "pi-b": "done"}, {"pi-a": "", "pi-b": "", "pi-x": ""})
    out = CliRunner().invoke(fleet_group, ["jobs", "--db", str(db_path)])
    assert out.exit_code == 0 and " done " in out.output and "pi-a:done pi-b:done" in out.output
    # a newer heartbeat wins over an older event; an older one does not undo a newer event
    upsert_device(db, replace(make_status("pi-b", at="2025-01-01T00:00:20.000Z"), current_job="other-job"))
    assert {r.device_id: r.current_job for r in list_devices(db)}["pi-b"] == "other-job"


def test_job_state_rules():
    from collector.fleet.listings import device_job_state, job_state

    assert device_job_state([("a", "done", True), ("a", "running", False), ("b", "fetching", False)]) == {
        "a": "done",
        "b": "fetching",
    }
    assert job_state("published", {}, {"a"}) == "published"
    assert job_state("timeout", {}, {"a"}) == "timeout"  # nothing heard since the push gave up
    assert job_state("timeout", {"a": "running"}, {"a"}) == "running"
    assert job_state("published", {"a": "done"}, {"a", "b"}) == "running"  # b not heard from yet
    assert job_state("published", {"a": "done", "b": "rejected"}, {"a", "b"}) == "failed"
    assert job_state("timeout", {"a": "done", "b": "done"}, {"a", "b"}) == "done"
    assert job_state("done", {"a": "done"}, {"a", "c"}) == "done"  # c joined the tag after the push
    assert job_state("unpublished", {"a": "done"}, {"a"}) == "unpublished"


def test_enroll_password_file_is_private_and_warned_about_in_a_git_work_tree(tmp_path):
    import os
    import stat
    import subprocess

    from collector.fleet.enroll_cli import enroll

    if shutil.which("mosquitto_passwd") is None or shutil.which("git") is None:
        pytest.skip("needs mosquitto_passwd and git")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    pwfile = tmp_path / "edgebench.passwd"
    args = ["pi-7", "--broker-host", "10.0.0.2", "--no-tls", "--password-file", str(pwfile)]
    ok = CliRunner().invoke(enroll, args)
    assert ok.exit_code == 0, ok.output
    try:
        import grp

        for_broker = os.geteuid() == 0 and grp.getgrnam("mosquitto") is not None
    except (ImportError, KeyError):
        for_broker = False
    # 0600; on a broker host as root, 0640 with group mosquitto so that mosquitto reads it on a reload
    assert stat.S_IMODE(pwfile.stat().st_mode) == (0o640 if for_broker else 0o600)
    assert f"warning: {pwfile} is a secret inside the git work tree" in ok.stderr
    assert "warning" not in ok.stdout and "enrolled pi-7" in ok.stdout
    (tmp_path / ".gitignore").write_text("*.passwd\n")
    again = CliRunner().invoke(enroll, args)
    assert again.exit_code == 0 and "warning" not in again.stderr
