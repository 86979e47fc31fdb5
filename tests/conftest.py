"""Shared fixtures: a real mosquitto on a free loopback port, tiny models, tmp SQLite paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgebench.broker import MosquittoBroker, mosquitto_path

DATA = Path(__file__).parent / "data"

pytest_plugins = ["testkit.small_disk"]  # the small_disk fixture: a real tmpfs to fill


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory) -> MosquittoBroker:
    """One broker for the session. Tests that stop or restart a broker use `fresh_mosquitto`."""
    if mosquitto_path() is None:
        pytest.fail("mosquitto is not installed; .ci/run installs it (apt-get install mosquitto)")
    broker = MosquittoBroker(workdir=tmp_path_factory.mktemp("mosquitto")).start()
    yield broker
    broker.stop()


@pytest.fixture
def fresh_mosquitto(tmp_path) -> MosquittoBroker:
    """A broker of this test's own, free to be stopped, killed and restarted."""
    broker = MosquittoBroker(workdir=tmp_path / "mosquitto").start()
    yield broker
    broker.stop()


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "edgebench.db"


@pytest.fixture(scope="session")
def tiny_mlp_onnx(tmp_path_factory) -> Path:
    from testkit.models import make_mlp_onnx

    return make_mlp_onnx(tmp_path_factory.mktemp("models") / "tiny_mlp.onnx")


@pytest.fixture(scope="session")
def tiny_cnn_onnx(tmp_path_factory) -> Path:
    from testkit.models import make_cnn_onnx

    return make_cnn_onnx(tmp_path_factory.mktemp("models") / "tiny_cnn.onnx")


@pytest.fixture(scope="session")
def two_input_onnx(tmp_path_factory) -> Path:
    from testkit.models import make_two_input_onnx

    return make_two_input_onnx(tmp_path_factory.mktemp("models") / "two_inputs.onnx")


@pytest.fixture(scope="session")
def tiny_mlp_tflite() -> Path:
    """Committed; regenerate with testkit/make_tflite.py."""
    return DATA / "tiny_mlp.tflite"
