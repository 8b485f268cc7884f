"""NVML power sampling, the idle baseline, active-window energy and GPU state, with the NVML
library's outermost calls replaced by recorded values (an RTX 4080 Laptop GPU, as in the original
TR116) on the real `pynvml` module, so its constants, structures and error classes stay real.
Everything above the NVML calls is real; timing tests run on a scripted clock."""

from __future__ import annotations

import threading
import time
import types

import pandas as pd
import pynvml
import pytest

from bench.config.plan import build_plan
from bench.config.profile import load_profile
from bench.core import metrics
from bench.core.store import Store, schema_errors
from bench.host import gpu
from bench.report.markdown import write_report
from bench.runtimes import create_runtime
from bench.study import power
from bench.study.runner import run_matrix

from conftest import smoke_variant
from ollama_server import FakeOllama

NS = 1_000_000_000
THERMAL = pynvml.nvmlClocksEventReasonSwThermalSlowdown
IDLE_BIT = pynvml.nvmlClocksEventReasonGpuIdle


class ScriptedClock:
    def __init__(self):
        self.now_ns = 10 * NS

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, s: float) -> None:
        self.now_ns += round(s * NS)


class RecordedNVML:
    """The pynvml calls the bundle makes, answering with recorded values. Power follows
    `watts(t_ns)` on `clock`, and the energy counter is its exact integral (in mJ), so expected
    energies can be worked out by hand."""

    def __init__(self, clock=time.perf_counter_ns, watts=lambda t: 80.0, energy_supported=True,
                 instant_supported=True, reasons=(0,)):
        self.clock, self.watts = clock, watts
        self.energy_supported, self.instant_supported = energy_supported, instant_supported
        self.reasons = list(reasons)
        self._t_ns, self._energy_j = clock(), 1_000.0
        self._lock = threading.Lock()  # the sampler thread and the runner both read the counter
        self.inits = 0

    def install(self, monkeypatch) -> "RecordedNVML":
        for name in dir(self):
            if name.startswith("nvml"):
                monkeypatch.setattr(pynvml, name, getattr(self, name))
        return self

    def _energy_mj(self) -> int:
        # integrate watts() in 1 ms steps up to now (exact for the piecewise-constant profiles here)
        with self._lock:
            now = self.clock()
            while self._t_ns < now:
                step = min(1_000_000, now - self._t_ns)
                self._energy_j += self.watts(self._t_ns) * step / NS
                self._t_ns += step
            return round(self._energy_j * 1000)

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlSystemGetDriverVersion(self):
        return "566.03"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12070

    def nvmlDeviceGetName(self, h):
        return "NVIDIA GeForce RTX 4080 Laptop GPU"

    def nvmlDeviceGetUUID(self, h):
        return "GPU-5c3b8a1e-0d2f-4b7e-9a61-2f0c7d9e4b11"

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 175_000

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(total=12_878_610_432, used=9_126_805_504, free=3_751_804_928)

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=97, memory=61)

    def nvmlDeviceGetTemperature(self, h, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return 71

    def nvmlDeviceGetClockInfo(self, h, kind):
        return {pynvml.NVML_CLOCK_SM: 2_280, pynvml.NVML_CLOCK_MEM: 9_001}[kind]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self.reasons.pop(0) if len(self.reasons) > 1 else self.reasons[0]

    def nvmlDeviceGetPowerUsage(self, h):
        return round(self.watts(self.clock()) * 1000)

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.energy_supported:
            raise pynvml.NVMLError_NotSupported(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self._energy_mj()

    def nvmlDeviceGetFieldValues(self, h, field_ids):
        values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        for v, fid in zip(values, field_ids):
            assert fid == pynvml.NVML_FI_DEV_POWER_INSTANT
            v.fieldId = fid
            if not self.instant_supported:  # the call succeeds; the field carries the error
                v.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                continue
            v.nvmlReturn, v.valueType = pynvml.NVML_SUCCESS, pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
            v.value.uiVal = self.nvmlDeviceGetPowerUsage(h)
        return values


def busy_profile(t0_s: float, spans: list[tuple[float, float]], busy_w=250.0, idle_w=50.0):
    """busy_w inside the spans (seconds after t0_s), idle_w elsewhere; integer ns, so exact."""
    edges = [(round((t0_s + a) * NS), round((t0_s + b) * NS)) for a, b in spans]
    return lambda t_ns: busy_w if any(a <= t_ns < b for a, b in edges) else idle_w


def request(start_s: float, end_s: float, tokens: int) -> dict:
    return {"start_offset_ms": start_s * 1000, "e2e_ms": (end_s - start_s) * 1000, "output_tokens": tokens}


def scripted_run(monitor: power.PowerMonitor, clock: ScriptedClock, sample_at: list[float], end_s: float):
    """A run window sampled at the given seconds after its start, ending at end_s."""
    with monitor.measure() as window:
        t0 = clock()
        for t in sample_at:
            clock.now_ns = t0 + round(t * NS)
            window.sampler.sample_once()
        clock.now_ns = t0 + round(end_s * NS)
    return window


def cell_of(tmp_path, results_dir):
    loaded = load_profile(smoke_variant(tmp_path))
    plan = build_plan(loaded.profile)
    return plan.items[0], Store("test")


def test_describe_gpus_from_nvml(monkeypatch):
    RecordedNVML().install(monkeypatch)
    (g,) = gpu.describe_gpus()
    assert g["name"] == "NVIDIA GeForce RTX 4080 Laptop GPU" and g["cuda"] == "12.7"
    assert g["power_limit_w"] == 175.0 and g["vram_total_bytes"] == 12_878_610_432
    assert gpu.nvidia_gpu_count() == (1, "NVML")


def test_idle_baseline_then_active_window_gross_and_net(monkeypatch, tmp_path, results_dir):
    clock = ScriptedClock()
    # idle: settle 1 s + 2 s sampled at 50 W; then a run whose two calls (0.5–2.5 s and 2.6–4.6 s)
    # draw 250 W, with 50 W in the gap between them and before/after them
    run_start_s = 10 + 3
    nvml = RecordedNVML(clock, busy_profile(run_start_s, [(0.5, 2.5), (2.6, 4.6)])).install(monkeypatch)
    item, store = cell_of(tmp_path, results_dir)
    monitor = power.PowerMonitor(store, interval_s=None, idle_s=2.0, settle_s=1.0, clock=clock, sleep=clock.advance)
    idle = monitor.take_idle_baseline(item.cell)
    assert idle.power_w == pytest.approx(50.0) and idle.duration_s == pytest.approx(2.0)
    window = scripted_run(monitor, clock, [0.5, 1.5, 2.5, 2.6, 3.6, 4.6], end_s=5.0)
    doc = {"lang": "python", "requests": [request(0.5, 2.5, 100), request(2.6, 4.6, 100)]}
    block = monitor.block(window, item, doc)
    assert block["source"] == "nvml_energy_counter" and block["power_field"] == gpu.INSTANT_FIELD
    assert block["active_s"] == pytest.approx(4.0)
    assert block["energy_j"] == pytest.approx(1000.0, abs=0.01)      # 250 W × 4 s, the gap cut out
    assert block["energy_run_j"] == pytest.approx(1050.0, abs=0.01)  # + 50 W × 1 s outside the calls
    assert block["mean_power_w"] == pytest.approx(250.0, abs=0.01)
    assert block["j_per_token"] == pytest.approx(5.0, abs=1e-4)       # 1000 J / 200 tokens
    assert block["tokens_per_j"] == pytest.approx(0.2, abs=1e-6)
    assert block["idle_power_w"] == pytest.approx(50.0)
    assert block["energy_net_j"] == pytest.approx(800.0, abs=0.01)   # 1000 − 50 W × 4 s
    assert block["j_per_token_net"] == pytest.approx(4.0, abs=1e-4)
    assert block["tokens_per_j_net"] == pytest.approx(0.25, abs=1e-6)
    assert block["alignment_slack_s"] == pytest.approx(0.4)          # 5.0 s window − 4.6 s last end
    assert block["n_samples"] == 8 and block["n_active_samples"] == 6
    assert nvml.inits == 2  # one NVML session for the baseline, one for the run
    log = pd.read_csv(store.path(item.cell.rel_dir) / power.POWER_LOG)
    assert list(log.columns) == power.COLUMNS
    assert log["segment"].tolist() == ["settle", "idle", "idle"] + ["gap", *["active"] * 6, "gap"]
    assert log["run_index"].isna().sum() == 3 and (log["run_index"].dropna() == item.run_index).all()


def test_energy_from_power_samples_and_the_averaged_reading(monkeypatch, tmp_path, results_dir):
    clock = ScriptedClock()
    RecordedNVML(clock, lambda t: 200.0, energy_supported=False, instant_supported=False).install(monkeypatch)
    item, store = cell_of(tmp_path, results_dir)
    monitor = power.PowerMonitor(store, interval_s=None, clock=clock)
    window = scripted_run(monitor, clock, [0.2, 0.9, 1.7], end_s=2.0)
    block = monitor.block(window, item, {"lang": "python", "requests": [request(0.2, 1.7, 60)]})
    assert block["source"] == "nvml_power_samples" and block["power_field"] == gpu.AVERAGE_CALL
    assert block["energy_j"] == pytest.approx(300.0)  # trapezoids of 200 W over 1.5 s
    assert block["tokens_per_j"] == pytest.approx(0.2)
    assert block["idle_power_w"] is None and block["tokens_per_j_net"] is None  # no baseline taken


def test_cumulative_energy_formula():
    # (100 + 120)/2 · 1 s + (120 + 140)/2 · 1 s = 240 J; half of the second second = 65 J
    e = metrics.cumulative_energy_from_power([0, 1, 2], [100, 120, 140])
    assert list(e) == [0, 110, 240]
    assert metrics.energy_over_spans_j([0, 1, 2], e, [(1.0, 1.5)]) == pytest.approx(65.0)  # linear E(t)
    assert metrics.active_spans([request(0, 2, 1), request(1, 3, 1), request(4, 5, 1)]) == [(0, 3), (4, 5)]


def test_rust_runs_are_aligned_by_the_runner_and_the_slack_is_recorded(monkeypatch, tmp_path, results_dir):
    clock = ScriptedClock()
    RecordedNVML(clock, lambda t: 100.0).install(monkeypatch)
    item, store = cell_of(tmp_path, results_dir)
    monitor = power.PowerMonitor(store, interval_s=None, clock=clock)
    # the agent process ran 1.0 s of requests inside a 1.3 s window: 0.3 s of start-up and exit
    window = scripted_run(monitor, clock, [0.0, 1.0], end_s=1.3)
    block = monitor.block(window, item, {"lang": "rust", "requests": [request(0.0, 1.0, 50)]})
    assert block["alignment"] == power.ALIGNMENT["rust"]
    assert block["alignment_slack_s"] == pytest.approx(0.3)
    assert block["energy_j"] == pytest.approx(100.0, abs=0.01)  # constant power: shift-invariant


def test_gpu_state_and_throttling(monkeypatch, tmp_path, results_dir):
    clock = ScriptedClock()
    # reasons read: at the start (idle), the probe sample, then a thermal slowdown in the window
    RecordedNVML(clock, reasons=[IDLE_BIT, IDLE_BIT, THERMAL, 0]).install(monkeypatch)
    item, store = cell_of(tmp_path, results_dir)
    monitor = power.PowerMonitor(store, interval_s=None, clock=clock)
    window = scripted_run(monitor, clock, [0.1, 0.5], end_s=1.0)
    block = monitor.block(window, item, {"lang": "python", "requests": [request(0.1, 0.9, 10)]})
    assert block["gpu_start"] == {"temp_c": 71, "sm_clock_mhz": 2280, "mem_clock_mhz": 9001, "power_limit_w": 175.0,
                                  "clocks_event_reasons": IDLE_BIT, "reasons": ["gpu_idle"]}
    assert block["throttled"] is True and block["throttle_reasons"] == ["sw_thermal_slowdown"]
    assert metrics.throttled([IDLE_BIT, 0], gpu.THROTTLE_MASK) is False
    assert metrics.throttled([None], gpu.THROTTLE_MASK) is None


def test_older_drivers_read_the_throttle_call(monkeypatch):
    nvml = RecordedNVML().install(monkeypatch)

    def missing(h):
        raise pynvml.NVMLError_FunctionNotFound(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", missing)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", lambda h: THERMAL)
    assert gpu.gpu_state(nvml.nvmlDeviceGetHandleByIndex(0))["reasons"] == ["sw_thermal_slowdown"]


def test_the_power_log_keeps_its_rate(monkeypatch, tmp_path, results_dir):
    RecordedNVML().install(monkeypatch)
    item, store = cell_of(tmp_path, results_dir)
    monitor = power.PowerMonitor(store, interval_s=0.02)
    with monitor.measure() as window:
        time.sleep(0.4)
    monitor.block(window, item, {"lang": "python", "requests": [request(0.05, 0.35, 10)]})
    log = pd.read_csv(store.path(item.cell.rel_dir) / power.POWER_LOG)
    # the spec's power_log.csv columns, plus memory, the energy counter, reasons and a monotonic time
    assert {"power.draw [W]", "utilization.gpu [%]", "temperature.gpu", "t_monotonic_ns"} <= set(log.columns)
    gaps = log["t_monotonic_ns"].diff().dropna() / NS
    assert len(log) >= 8
    assert 0.018 <= gaps.median() <= 0.06  # deadlines on a 20 ms grid: never faster, rarely slower
    assert (log["power.draw [W]"] == 80.0).all() and (log["memory.used [MiB]"] == 9_126_805_504 / 2**20).all()


def test_without_nvml_every_field_is_null_with_the_reason(tmp_path, results_dir):
    # The real library on this machine: no driver, so NVML says so and nothing is sampled or waited for.
    assert isinstance(gpu.describe_gpus(), str)
    item, store = cell_of(tmp_path, results_dir)
    monitor = power.PowerMonitor(store, sleep=lambda s: pytest.fail("waited for an idle baseline without NVML"))
    assert monitor.take_idle_baseline(item.cell) is None
    with monitor.measure() as window:
        pass
    block = monitor.block(window, item, {"lang": "python", "requests": [request(0, 1, 5)]})
    assert block["available"] is False and "NVML" in block["reason"]
    assert all(v is None for k, v in block.items() if k not in ("available", "reason"))
    assert not (store.path(item.cell.rel_dir) / power.POWER_LOG).exists()


def two_servers(a, b, model="gemma3:latest"):
    def external(d):
        d["runtime"] = {"kind": "external", "endpoints": [{"name": "a", "url": a.url, "api": "ollama"},
                                                          {"name": "b", "url": b.url, "api": "ollama"}]}
        d["models"] = [{"name": model, "baseline": True}]
        d["single"]["gpu_layers"] = [-1]  # a GPU host: all layers on the GPU, as the test server reports
    return external


def test_runs_carry_the_power_block_and_the_log(monkeypatch, tmp_path, results_dir):
    RecordedNVML(watts=lambda t: 80.0).install(monkeypatch)  # constant: idle = active power
    monkeypatch.setattr(power, "IDLE_SETTLE_S", 0.05)
    monkeypatch.setattr(power, "IDLE_S", 0.2)
    with FakeOllama(token_s=0.005) as a, FakeOllama(token_s=0.005) as b:
        loaded = load_profile(smoke_variant(tmp_path, two_servers(a, b)))
        plan = build_plan(loaded.profile)
        store = Store("test")
        outcome = run_matrix(loaded, plan, create_runtime(loaded.profile), store, progress=False)
    assert outcome.done == 1
    (run,) = store.iter_runs(plan.cells[0].rel_dir)
    doc = run.doc.to_json()
    assert schema_errors(doc) == []
    p = doc["power"]
    active = sum(r["e2e_ms"] for r in doc["requests"]) / 1000  # the single suite's calls do not overlap
    assert p["active_s"] == pytest.approx(active)
    assert p["energy_j"] == pytest.approx(80.0 * active, rel=0.01)
    assert p["tokens_per_j"] == pytest.approx(16 / (80.0 * active), rel=0.01)  # 2 calls × 8 tokens
    assert p["idle_power_w"] == pytest.approx(80.0, rel=0.01)
    assert abs(p["j_per_token_net"]) < 0.01 * p["j_per_token"]  # nothing above idle
    assert 0 <= p["alignment_slack_s"] < 0.5 and p["throttled"] is False
    log = pd.read_csv(store.path(plan.cells[0].rel_dir) / power.POWER_LOG)
    assert {"settle", "idle", "active"} <= set(log["segment"])
    text = write_report(loaded, store).read_text()
    section = text.split("## 10.")[1].split("## 11.")[0]
    assert "active window" in section and "gross tokens/J" in section and "idle subtracted" in section
    assert f"power from {gpu.INSTANT_FIELD}, energy from nvml_energy_counter" in section
    assert "### Thermal trend and throttling" in section and "No run throttled." in section
    assert "| `tokens_per_j_net` | tok/J |" in text and "| `idle_power_w` | W |" in text


def test_a_failure_records_the_vram_in_use(monkeypatch, tmp_path, results_dir):
    RecordedNVML().install(monkeypatch)
    with FakeOllama() as a, FakeOllama() as b:
        def mutate(d):
            two_servers(a, b, "oom:latest")(d)
            d["fallback"] = {"gpu_layers": [0]}  # one rung below every layer: two attempts in all
        loaded = load_profile(smoke_variant(tmp_path, mutate))
        store = Store("test")
        outcome = run_matrix(loaded, build_plan(loaded.profile), create_runtime(loaded.profile), store,
                             progress=False)
    assert outcome.failed == 1
    failures = store.failures()
    assert [f["attempted_config"]["gpu_layers"] for f in failures] == [-1, 0]  # one line per attempt
    for f in failures:
        assert f["error_kind"] == "oom" and f["requested_config"]["gpu_layers"] == -1
        assert (f["observed_vram_used_bytes"], f["observed_vram_total_bytes"]) == (9_126_805_504, 12_878_610_432)
    assert [f["fallback"] for f in failures] == ["next rung: oom:latest gpu_layers 0 ctx 512", "config skipped"]
