"""The host fingerprint: the comparable subset of a study's manifest (bench/manifest.py).

CPU model, physical and logical cores, RAM, GPU(s) and driver, OS and kernel, the engine and its
version, the harness commit, and `host_id`: a short hash of the hardware part only, so two
studies on the same machine share an id across OS, driver, engine and harness updates. Every
value is read from the manifest, so the same function derives the block of a study made before
the fingerprint existed; what such a manifest lacks is listed in `unknown`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bench import fmt

HOST_ID_CHARS = 12
# What identifies a model in a manifest entry, in the order `invoke reproduce` checks them: the
# GGUF file's sha256 (the weights), then Ollama's digest (weights, template and parameters).
MODEL_IDENTITY_KEYS = ("file_sha256", "digest")
SYS_CPU = Path("/sys/devices/system/cpu")
# Fields whose absence the fingerprint reports (gpu_driver is not applicable without a GPU).
FIELDS = ("cpu", "cores_physical", "cores_logical", "ram_bytes", "gpus", "gpu_driver", "os", "kernel",
          "engine", "engine_version", "harness_commit")


def physical_cores(sys_cpu: Path = SYS_CPU) -> int | None:
    """Distinct cores among the CPUs the kernel lists: every hardware thread of one core shows the
    same sibling list (sysfs topology, what psutil reads as well), so count the distinct lists."""
    siblings = set()
    for cpu in sys_cpu.glob("cpu[0-9]*"):
        for name in ("core_cpus_list", "thread_siblings_list"):  # the second: kernels before 5.7
            try:
                siblings.add((cpu / "topology" / name).read_text().strip())
                break
            except OSError:
                continue
    return len(siblings) or None


def _gpus(gpu) -> tuple[list[dict] | None, str | None]:
    """The manifest's `gpu` (a list from NVML, or a string saying why there is none)."""
    if isinstance(gpu, str):  # "none (reason)": known to have no GPU
        return [], None
    if not isinstance(gpu, list):
        return None, None
    drivers = sorted({g.get("driver") for g in gpu if g.get("driver")})
    return [{"name": g.get("name"), "vram_total_bytes": g.get("vram_total_bytes")} for g in gpu], \
        " / ".join(drivers) or None


def _engine_version(runtime: dict) -> str | None:
    if runtime.get("llama_server"):
        return runtime["llama_server"].get("version")
    versions = sorted({v for v in (runtime.get("ollama_version") or {}).values() if v})
    return " / ".join(versions) or None


def host_id(fp: dict) -> str | None:
    """sha256 of the hardware part, first HOST_ID_CHARS hex digits. Physical cores are left out:
    manifests before the fingerprint never recorded them, and hashing them would give one machine
    two ids. RAM is rounded to GiB because MemTotal moves by a few MiB between kernels."""
    ram = fp.get("ram_bytes")
    hardware = {"cpu": fp.get("cpu"), "cores_logical": fp.get("cores_logical"),
                "ram_gib": round(ram / 2**30) if ram else None,
                "gpus": None if fp.get("gpus") is None else
                sorted((g.get("name") or "", round((g.get("vram_total_bytes") or 0) / 2**30)) for g in fp["gpus"])}
    if all(v is None for v in hardware.values()):
        return None
    canonical = json.dumps(hardware, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:HOST_ID_CHARS]


def derive(manifest: dict) -> dict:
    """The fingerprint block from a manifest's host, gpu, runtime and harness entries."""
    host, runtime = manifest.get("host") or {}, manifest.get("runtime") or {}
    gpus, driver = _gpus(manifest.get("gpu"))
    fp = {"cpu": host.get("cpu"), "cores_physical": host.get("physical_cores"), "cores_logical": host.get("cores"),
          "ram_bytes": host.get("ram_bytes"), "gpus": gpus, "gpu_driver": driver,
          "os": host.get("os"), "kernel": host.get("kernel"),
          "engine": runtime.get("engine") or runtime.get("kind"), "engine_version": _engine_version(runtime),
          "harness_commit": (manifest.get("harness") or {}).get("commit")}
    fp["unknown"] = [k for k in FIELDS if fp[k] is None and not (k == "gpu_driver" and gpus == [])]
    fp["host_id"] = host_id(fp)
    return fp


def of_manifest(manifest: dict) -> dict:
    """A study's fingerprint: the recorded block, or for a study made before it was recorded, the
    block derived from its manifest, marked `derived` (its `unknown` says what that lacks)."""
    if isinstance(manifest.get("fingerprint"), dict):
        return {**manifest["fingerprint"], "derived": False}
    return {**derive(manifest), "derived": True}


def model_identity(entry: dict) -> dict[str, str]:
    """The identity keys a manifest's model entry recorded (empty when it recorded an error)."""
    return {k: entry[k] for k in MODEL_IDENTITY_KEYS if entry.get(k)}


def identity_text(entry: dict, chars: int = 12) -> str:
    labels = {"file_sha256": "GGUF sha256", "digest": "Ollama digest"}
    ident = model_identity(entry)
    return ", ".join(f"{labels[k]} `{v.removeprefix('sha256:')[:chars]}`" for k, v in ident.items()) \
        or f"identity not recorded ({entry.get('error', 'no digest')})"


def gpu_text(fp: dict) -> str:
    if fp.get("gpus") is None:
        return "GPU unknown"
    if not fp["gpus"]:
        return "no GPU"
    names = ", ".join(f"{g.get('name')} ({fmt.bytes_(g.get('vram_total_bytes'))})" for g in fp["gpus"])
    return names + (f", driver {fp['gpu_driver']}" if fp.get("gpu_driver") else "")


def one_line(fp: dict) -> str:
    """The fingerprint in one line, for an issue or a table cell."""
    cores = fp.get("cores_logical")
    phys = fp.get("cores_physical")
    parts = [fp.get("cpu") or "CPU unknown",
             (f"{cores} cores" if cores else "cores unknown") + (f" ({phys} physical)" if phys else ""),
             f"{fmt.bytes_(fp['ram_bytes'])} RAM" if fp.get("ram_bytes") else "RAM unknown",
             gpu_text(fp), fp.get("os") or "OS unknown",
             f"{fp.get('engine') or 'engine unknown'} {fp.get('engine_version') or ''}".strip(),
             f"harness {(fp.get('harness_commit') or 'unknown')[:10]}"]
    line = f"host `{fp.get('host_id') or 'unknown'}`: " + " · ".join(parts)
    if fp.get("unknown"):
        line += f" (not recorded: {', '.join(fp['unknown'])})"
    return line
