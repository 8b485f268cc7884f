"""The host fingerprint: the comparable subset of a study's manifest (bench/study/manifest_writer.py).

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

from bench.core import fmt
from bench.core.manifest import (
    Fingerprint,
    FingerprintGpu,
    GpuDevice,
    Host,
    Manifest,
    ModelIdentity,
    runtime_identity,
)

HOST_ID_CHARS = 12
SYS_CPU = Path("/sys/devices/system/cpu")
# Fields whose absence the fingerprint reports (gpu_driver is not applicable without a GPU).
FIELDS = ("cpu", "cores_physical", "cores_logical", "ram_bytes", "gpus", "gpu_driver", "os", "kernel",
          "engine", "engine_version", "harness_commit")


class StudyFingerprint(Fingerprint):
    """A study's fingerprint as read: `derived` when its manifest predates the recorded block."""

    derived: bool


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


def _gpus(gpu: list[GpuDevice] | str | None) -> tuple[list[FingerprintGpu] | None, str | None]:
    """The manifest's `gpu` (a list from NVML, or a string saying why there is none)."""
    if isinstance(gpu, str):  # "none (reason)": known to have no GPU
        return [], None
    if gpu is None:
        return None, None
    drivers = sorted({g.driver for g in gpu if g.driver})
    return [FingerprintGpu(name=g.name, vram_total_bytes=g.vram_total_bytes) for g in gpu], " / ".join(drivers) or None


def host_id(fp: Fingerprint) -> str | None:
    """sha256 of the hardware part, first HOST_ID_CHARS hex digits. Physical cores are left out:
    manifests before the fingerprint never recorded them, and hashing them would give one machine
    two ids. RAM is rounded to GiB because MemTotal moves by a few MiB between kernels."""
    hardware = {"cpu": fp.cpu, "cores_logical": fp.cores_logical,
                "ram_gib": round(fp.ram_bytes / 2**30) if fp.ram_bytes else None,
                "gpus": None if fp.gpus is None else
                sorted((g.name or "", round((g.vram_total_bytes or 0) / 2**30)) for g in fp.gpus)}
    if all(v is None for v in hardware.values()):
        return None
    canonical = json.dumps(hardware, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:HOST_ID_CHARS]


def derive(manifest: Manifest) -> Fingerprint:
    """The fingerprint block from a manifest's host, gpu, runtime and harness entries."""
    runtime = runtime_identity(manifest)
    return build(manifest.host, manifest.gpu, runtime.engine, runtime.engine_version, manifest.harness.commit)


def build(host: Host, gpu: list[GpuDevice] | str | None, engine: str | None, engine_version: str | None,
          commit: str | None) -> Fingerprint:
    """The fingerprint block from its parts: a manifest's (derive), or a fleet host's own survey."""
    gpus, driver = _gpus(gpu)
    fp = Fingerprint(cpu=host.cpu, cores_physical=host.physical_cores, cores_logical=host.cores,
                     ram_bytes=host.ram_bytes, gpus=gpus, gpu_driver=driver, os=host.os, kernel=host.kernel,
                     engine=engine, engine_version=engine_version, harness_commit=commit)
    fp.unknown = [k for k in FIELDS if getattr(fp, k) is None and not (k == "gpu_driver" and gpus == [])]
    fp.host_id = host_id(fp)
    return fp


def of_manifest(manifest: Manifest) -> StudyFingerprint:
    """A study's fingerprint: the recorded block, or for a study made before it was recorded, the
    block derived from its manifest, marked `derived` (its `unknown` says what that lacks)."""
    recorded = manifest.fingerprint
    return StudyFingerprint(**(recorded or derive(manifest)).model_dump(), derived=recorded is None)


def identity_text(entry: ModelIdentity, chars: int = 12) -> str:
    labels = {"file_sha256": "GGUF sha256", "digest": "Ollama digest"}
    ident = entry.identity()
    return ", ".join(f"{labels[k]} `{v.removeprefix('sha256:')[:chars]}`" for k, v in ident.items()) \
        or f"identity not recorded ({entry.error or 'no digest'})"


def gpu_text(fp: Fingerprint) -> str:
    if fp.gpus is None:
        return "GPU unknown"
    if not fp.gpus:
        return "no GPU"
    names = ", ".join(f"{g.name} ({fmt.bytes_(g.vram_total_bytes)})" for g in fp.gpus)
    return names + (f", driver {fp.gpu_driver}" if fp.gpu_driver else "")


def one_line(fp: Fingerprint) -> str:
    """The fingerprint in one line, for an issue or a table cell."""
    cores, phys = fp.cores_logical, fp.cores_physical
    parts = [fp.cpu or "CPU unknown",
             (f"{cores} cores" if cores else "cores unknown") + (f" ({phys} physical)" if phys else ""),
             f"{fmt.bytes_(fp.ram_bytes)} RAM" if fp.ram_bytes else "RAM unknown",
             gpu_text(fp), fp.os or "OS unknown",
             f"{fp.engine or 'engine unknown'} {fp.engine_version or ''}".strip(),
             f"harness {(fp.harness_commit or 'unknown')[:10]}"]
    line = f"host `{fp.host_id or 'unknown'}`: " + " · ".join(parts)
    if fp.unknown:
        line += f" (not recorded: {', '.join(fp.unknown)})"
    return line
