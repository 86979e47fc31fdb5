"""Ed25519 job signing: real keys, real signatures, every way a job can fail verification."""

from __future__ import annotations

import stat
from dataclasses import replace

import pytest

from wire.schema import ArtifactRef, BenchSettings, CancelJob, Job, new_id, utc_now
from wire.signing import (
    SignatureError,
    generate_keypair,
    key_id,
    load_public_key,
    load_trusted_keys,
    sign_job,
    verify,
)

SHA = "ab" * 32


def make_job(**kw) -> Job:
    base = dict(
        job_id=new_id(),
        created_at=utc_now(),
        target="device:pi-1",
        artifacts=(ArtifactRef(name="m.onnx", sha256=SHA, size_bytes=10, format="onnx"),),
        settings=BenchSettings(preset="quick"),
    )
    base.update(kw)
    return Job(**base)


@pytest.fixture
def keys(tmp_path):
    return generate_keypair(tmp_path / "keys", "collector")


def test_generate_writes_pem_pair_private_key_0600(keys):
    key_path, pub_path = keys
    assert key_path.name == "collector.key" and pub_path.name == "collector.pub"
    assert key_path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pub_path.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert len(key_id(load_public_key(pub_path))) == 16


def test_generate_refuses_to_overwrite(keys):
    with pytest.raises(SignatureError, match="already exists"):
        generate_keypair(keys[0].parent, "collector")


def test_sign_and_verify_roundtrip_through_json(keys):
    key_path, pub_path = keys
    signed = sign_job(make_job(), key_path)
    assert signed.key_id == key_id(load_public_key(pub_path))
    again = Job.from_json(signed.to_json())
    assert verify(again, [pub_path]) == signed.key_id
    assert verify(again, load_trusted_keys([pub_path])) == signed.key_id


def test_cancel_job_signed_and_verified(keys):
    key_path, pub_path = keys
    cancel = sign_job(CancelJob(job_id=new_id(), created_at=utc_now()), key_path)
    assert verify(CancelJob.from_json(cancel.to_json()), [pub_path])


def test_unsigned_rejected(keys):
    with pytest.raises(SignatureError, match="unsigned"):
        verify(make_job(), [keys[1]])


def test_unknown_key_rejected(keys, tmp_path):
    other_key, _ = generate_keypair(tmp_path / "other", "intruder")
    signed = sign_job(make_job(), other_key)
    with pytest.raises(SignatureError, match="unknown key"):
        verify(signed, [keys[1]])


def test_tampered_job_rejected(keys):
    signed = sign_job(make_job(), keys[0])
    tampered = replace(signed, settings=BenchSettings(preset="thorough"))
    with pytest.raises(SignatureError, match="bad signature"):
        verify(tampered, [keys[1]])
    with pytest.raises(SignatureError, match="base64"):
        verify(replace(signed, signature="***"), [keys[1]])


def test_unusable_key_files(tmp_path):
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(SignatureError, match="not a PEM public key"):
        load_public_key(bad)
    with pytest.raises(SignatureError, match="cannot read"):
        load_public_key(tmp_path / "missing.pub")


def test_private_key_is_0600_whatever_the_umask(tmp_path):
    import os

    old = os.umask(0)
    try:
        key_path, pub_path = generate_keypair(tmp_path / "keys", "loose")
    finally:
        os.umask(old)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub_path.stat().st_mode) & 0o044  # the public half stays readable


def test_a_secret_in_a_git_work_tree_is_warned_about_unless_ignored(tmp_path):
    import shutil
    import subprocess

    from wire.signing import secret_file_warning

    outside, _ = generate_keypair(tmp_path / "outside", "collector")
    assert secret_file_warning(outside) is None  # no work tree above it
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    key, _ = generate_keypair(repo / "keys", "collector")
    warning = secret_file_warning(key)
    assert warning is not None and str(key) in warning and str(repo) in warning and "\n" not in warning
    assert "git does not ignore it" in warning
    (repo / ".gitignore").write_text("keys/\n")
    assert secret_file_warning(key) is None
    assert secret_file_warning(repo / "edgebench.passwd") is not None  # not ignored by that line
    (repo / ".gitignore").write_text("*.key\n*.passwd\n")
    assert secret_file_warning(key) is None and secret_file_warning(repo / "edgebench.passwd") is None
