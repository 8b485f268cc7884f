"""NVIDIA GPU facts and power sampling through NVML (the nvidia-ml-py package).

On a host without a driver `pynvml.nvmlInit()` raises an NVMLError; every caller here treats
that as "no GPU" rather than a failure. Each query is guarded on its own, because a GPU may lack
one feature (the energy counter needs Volta or newer) and still have the others.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pynvml


def nvidia_gpu_count() -> tuple[int, str]:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return 0, f"NVML: {exc}"
    try:
        return pynvml.nvmlDeviceGetCount(), "NVML"
    finally:
        pynvml.nvmlShutdown()


def _guarded(fn, *args):
    try:
        return fn(*args)
    except pynvml.NVMLError:
        return None


def describe_gpus() -> list[dict] | str:
    """Name, UUID, driver, CUDA, VRAM and power limit of each GPU, or the reason there are none."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"none ({exc})"
    try:
        driver = _guarded(pynvml.nvmlSystemGetDriverVersion)
        cuda = _guarded(pynvml.nvmlSystemGetCudaDriverVersion)
        cuda_str = f"{cuda // 1000}.{(cuda % 1000) // 10}" if cuda else None
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = _guarded(pynvml.nvmlDeviceGetMemoryInfo, h)
            limit = _guarded(pynvml.nvmlDeviceGetEnforcedPowerLimit, h)
            gpus.append({
                "index": i,
                "name": _guarded(pynvml.nvmlDeviceGetName, h),
                "uuid": _guarded(pynvml.nvmlDeviceGetUUID, h),
                "driver": driver,
                "cuda": cuda_str,
                "vram_total_bytes": mem.total if mem else None,
                "power_limit_w": limit / 1000 if limit else None,
            })
        return gpus
    finally:
        pynvml.nvmlShutdown()


@dataclass
class PowerSample:
    t_ns: int
    power_w: float | None
    util_pct: float | None
    temp_c: float | None
    vram_used_bytes: int | None


@dataclass
class PowerSampler:
    """Polls GPU 0 every `interval_s` on a background thread while a benchmark phase runs.

    `energy_j()` prefers the driver's energy counter (millijoules, exact) and falls back to
    integrating the sampled power over time (trapezoid rule).
    """

    interval_s: float = 0.2
    device_index: int = 0
    clock: object = time.perf_counter_ns
    samples: list[PowerSample] = field(default_factory=list)
    available: bool = False
    reason: str = ""
    _energy_start_mj: int | None = None
    _energy_end_mj: int | None = None

    def __enter__(self) -> "PowerSampler":
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self.reason = f"no NVML ({exc})"
            return self
        self.available = True
        self._t0_ns = self.clock()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
        self._energy_start_mj = _guarded(pynvml.nvmlDeviceGetTotalEnergyConsumption, self._handle)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nvml-power", daemon=True)
        self._thread.start()
        return self

    def sample_once(self) -> PowerSample:
        h = self._handle
        power_mw = _guarded(pynvml.nvmlDeviceGetPowerUsage, h)
        util = _guarded(pynvml.nvmlDeviceGetUtilizationRates, h)
        temp = _guarded(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU)
        mem = _guarded(pynvml.nvmlDeviceGetMemoryInfo, h)
        s = PowerSample(self.clock(), power_mw / 1000 if power_mw is not None else None,
                        util.gpu if util else None, temp, mem.used if mem else None)
        self.samples.append(s)
        return s

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc) -> None:
        if not self.available:
            return
        self._stop.set()
        self._thread.join()
        self.sample_once()
        self._energy_end_mj = _guarded(pynvml.nvmlDeviceGetTotalEnergyConsumption, self._handle)
        pynvml.nvmlShutdown()

    def energy_j(self) -> float | None:
        if self._energy_start_mj is not None and self._energy_end_mj is not None:
            return (self._energy_end_mj - self._energy_start_mj) / 1000.0
        pts = [(s.t_ns, s.power_w) for s in self.samples if s.power_w is not None]
        if len(pts) < 2:
            return None
        return sum((b[0] - a[0]) / 1e9 * (a[1] + b[1]) / 2 for a, b in zip(pts, pts[1:]))

    def mean_power_w(self) -> float | None:
        watts = [s.power_w for s in self.samples if s.power_w is not None]
        return sum(watts) / len(watts) if watts else None

    def duration_s(self) -> float:
        return (self.samples[-1].t_ns - self._t0_ns) / 1e9 if self.samples else 0.0

    def summary(self, output_tokens: int) -> dict | None:
        """The run's power block for metrics.json (None when no GPU was sampled)."""
        from bench import metrics

        if not self.available:
            return None
        energy = self.energy_j()
        temps = [s.temp_c for s in self.samples if s.temp_c is not None]
        return {
            "source": "nvml_energy_counter" if self._energy_end_mj is not None else "nvml_power_samples",
            "gpu_index": self.device_index, "interval_s": self.interval_s, "n_samples": len(self.samples),
            "mean_power_w": metrics.mean_power_w(energy, self.duration_s()),
            "energy_j": energy, "tokens_per_j": metrics.tokens_per_joule(output_tokens, energy),
            "peak_vram_used_bytes": self.peak_vram_bytes(), "max_temp_c": max(temps) if temps else None,
        }

    def peak_vram_bytes(self) -> int | None:
        used = [s.vram_used_bytes for s in self.samples if s.vram_used_bytes is not None]
        return max(used) if used else None
