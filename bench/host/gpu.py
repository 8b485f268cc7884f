"""NVIDIA GPU facts and power sampling through NVML (the nvidia-ml-py package).

On a host without a driver `pynvml.nvmlInit()` raises an NVMLError; every caller here treats
that as "no GPU" rather than a failure. Each query is guarded on its own, because a GPU may lack
one feature (the energy counter needs Volta or newer) and still have the others.
"""

from __future__ import annotations

import functools
import operator
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


def vram_now(device_index: int = 0) -> tuple[int | None, int | None]:
    """VRAM in use and in total on one GPU now; (None, None) without NVML."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None, None
    try:
        mem = _guarded(lambda: pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(device_index)))
        return (mem.used, mem.total) if mem else (None, None)
    finally:
        pynvml.nvmlShutdown()


# Clocks-event ("throttle") reasons that mean the GPU ran slower than it could: power cap,
# thermal and hardware slowdowns. Idle, application-clock settings, sync boost and display
# clocks are not throttling.
THROTTLE_REASONS = {
    "sw_power_cap": pynvml.nvmlClocksEventReasonSwPowerCap,
    "hw_slowdown": pynvml.nvmlClocksEventReasonHwSlowdown,
    "sw_thermal_slowdown": pynvml.nvmlClocksEventReasonSwThermalSlowdown,
    "hw_thermal_slowdown": pynvml.nvmlClocksEventReasonHwThermalSlowdown,
    "hw_power_brake_slowdown": pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown,
}
THROTTLE_MASK = functools.reduce(operator.or_, THROTTLE_REASONS.values())
OTHER_REASONS = {
    "gpu_idle": pynvml.nvmlClocksEventReasonGpuIdle,
    "applications_clocks_setting": pynvml.nvmlClocksEventReasonApplicationsClocksSetting,
    "sync_boost": pynvml.nvmlClocksEventReasonSyncBoost,
    "display_clock_setting": pynvml.nvmlClocksEventReasonDisplayClockSetting,
}
# What `PowerSample.power_w` was read from (recorded in each run's power block).
INSTANT_FIELD = "NVML_FI_DEV_POWER_INSTANT"
AVERAGE_CALL = "nvmlDeviceGetPowerUsage (1 s average on Ampere and newer)"


def reason_names(mask: int | None) -> list[str] | None:
    if mask is None:
        return None
    return [name for name, bit in {**THROTTLE_REASONS, **OTHER_REASONS}.items() if mask & bit]


def clocks_event_reasons(h) -> int | None:
    """The current clocks-event reasons bitmask; drivers before the rename only have the
    `...ThrottleReasons` call, which returns the same bits."""
    try:
        return pynvml.nvmlDeviceGetCurrentClocksEventReasons(h)
    except pynvml.NVMLError_FunctionNotFound:
        return _guarded(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons, h)
    except pynvml.NVMLError:
        return None


def instant_power_mw(h) -> int | float | None:
    """NVML_FI_DEV_POWER_INSTANT in milliwatts, or None where the GPU or driver lacks the field
    (the call succeeds but the field carries its own error code then)."""
    try:
        (value,) = pynvml.nvmlDeviceGetFieldValues(h, [pynvml.NVML_FI_DEV_POWER_INSTANT])
    except pynvml.NVMLError:
        return None
    if value.nvmlReturn != pynvml.NVML_SUCCESS:
        return None
    member = {pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal", pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
              pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal", pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
              pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal", pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
              pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal"}.get(value.valueType)
    return getattr(value.value, member) if member else None


def gpu_state(h) -> dict:
    """Temperature, SM and memory clocks, the enforced power limit and the clocks-event reasons now."""
    limit = _guarded(pynvml.nvmlDeviceGetEnforcedPowerLimit, h)
    reasons = clocks_event_reasons(h)
    return {"temp_c": _guarded(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
            "sm_clock_mhz": _guarded(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM),
            "mem_clock_mhz": _guarded(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM),
            "power_limit_w": limit / 1000 if limit is not None else None,
            "clocks_event_reasons": reasons, "reasons": reason_names(reasons)}


@dataclass
class PowerSample:
    t_ns: int
    power_w: float | None
    util_pct: float | None
    temp_c: float | None
    vram_used_bytes: int | None
    energy_mj: int | None = None
    reasons: int | None = None


@dataclass
class PowerSampler:
    """Polls one GPU every `interval_s` on a background thread while a benchmark phase runs.

    Each sample holds power (the instant-power field where the driver has it, else the usual
    reading, which is a 1 s average on Ampere and newer), utilization, temperature, VRAM used,
    the total-energy counter and the clocks-event reasons. `interval_s=None` samples only on
    entry, on exit and on `sample_once()` (scripted-clock tests). The GPU's state (clocks, limit,
    reasons) is read on entry and on exit. Without NVML it does nothing and says why in `reason`.
    """

    interval_s: float | None = 0.1
    device_index: int = 0
    clock: object = time.perf_counter_ns
    samples: list[PowerSample] = field(default_factory=list)
    available: bool = False
    reason: str = ""
    power_field: str | None = None
    state_start: dict | None = None
    state_end: dict | None = None

    def __enter__(self) -> "PowerSampler":
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self.reason = f"no NVML ({exc})"
            return self
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            self.reason = f"no GPU {self.device_index} ({exc})"
            return self
        self.available = True
        self.power_field = INSTANT_FIELD if instant_power_mw(self._handle) is not None else AVERAGE_CALL
        self.state_start = gpu_state(self._handle)
        self._t0_ns = self.clock()
        self.sample_once()
        if self.interval_s:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._loop, name="nvml-power", daemon=True)
            self._thread.start()
        return self

    def sample_once(self) -> PowerSample:
        h = self._handle
        if self.power_field == INSTANT_FIELD:
            power_mw = instant_power_mw(h)
        else:
            power_mw = _guarded(pynvml.nvmlDeviceGetPowerUsage, h)
        util = _guarded(pynvml.nvmlDeviceGetUtilizationRates, h)
        mem = _guarded(pynvml.nvmlDeviceGetMemoryInfo, h)
        s = PowerSample(self.clock(), power_mw / 1000 if power_mw is not None else None,
                        util.gpu if util else None,
                        _guarded(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
                        mem.used if mem else None,
                        _guarded(pynvml.nvmlDeviceGetTotalEnergyConsumption, h),
                        clocks_event_reasons(h))
        self.samples.append(s)
        return s

    def _loop(self) -> None:
        # Deadlines on a fixed grid, so the rate holds even when a sample is slow.
        k = 1
        while not self._stop.wait(max(0.0, self._t0_ns / 1e9 + k * self.interval_s - self.clock() / 1e9)):
            self.sample_once()
            k = max(k + 1, int((self.clock() - self._t0_ns) / 1e9 / self.interval_s) + 1)

    def __exit__(self, *exc) -> None:
        if not self.available:
            return
        if self.interval_s:
            self._stop.set()
            self._thread.join()
        self.sample_once()
        self.state_end = gpu_state(self._handle)
        pynvml.nvmlShutdown()

    def peak_vram_bytes(self) -> int | None:
        used = [s.vram_used_bytes for s in self.samples if s.vram_used_bytes is not None]
        return max(used) if used else None
