"""NVML power sampling and GPU facts, with the NVML library replaced by recorded values
(an RTX 4080 Laptop GPU, as in the original TR116). Everything above the NVML calls is real."""

from __future__ import annotations

import types

import pynvml
import pytest

from bench import gpu, metrics
from bench.profile import load_profile
from bench.runner import run_matrix
from bench.plan import build_plan
from bench.runtimes import create_runtime
from bench.store import Store, schema_errors
from conftest import smoke_variant
from ollama_server import FakeOllama


class RecordedNVML:
    """The pynvml calls the bundle makes, answering with recorded values."""

    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, energy_mj=None, power_mw=None, energy_supported=True):
        self.energy_mj = list(energy_mj or [1_000_000, 1_150_000])
        self.power_mw = list(power_mw or [80_000])
        self.energy_supported = energy_supported
        self.inits = 0

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
        return 71

    def nvmlDeviceGetPowerUsage(self, h):
        return self.power_mw.pop(0) if len(self.power_mw) > 1 else self.power_mw[0]

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.energy_supported:
            raise pynvml.NVMLError_NotSupported(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.energy_mj.pop(0) if len(self.energy_mj) > 1 else self.energy_mj[0]


def test_describe_gpus_from_nvml(monkeypatch):
    monkeypatch.setattr(gpu, "pynvml", RecordedNVML())
    (g,) = gpu.describe_gpus()
    assert g["name"] == "NVIDIA GeForce RTX 4080 Laptop GPU" and g["cuda"] == "12.7"
    assert g["power_limit_w"] == 175.0 and g["vram_total_bytes"] == 12_878_610_432
    assert gpu.nvidia_gpu_count() == (1, "NVML")


def test_no_driver_means_no_gpu():
    # The real library on this machine: no driver, so NVML says so and nothing is sampled.
    assert isinstance(gpu.describe_gpus(), str)
    with gpu.PowerSampler() as s:
        pass
    assert not s.available and s.summary(100) is None and "NVML" in s.reason


def test_energy_from_the_counter(monkeypatch):
    monkeypatch.setattr(gpu, "pynvml", RecordedNVML(energy_mj=[1_000_000, 1_150_000]))
    with gpu.PowerSampler(interval_s=0.01) as s:
        pass
    block = s.summary(output_tokens=300)
    assert block["source"] == "nvml_energy_counter"
    assert block["energy_j"] == pytest.approx(150.0)
    assert block["tokens_per_j"] == pytest.approx(2.0)  # 300 tokens / 150 J
    assert block["peak_vram_used_bytes"] == 9_126_805_504 and block["max_temp_c"] == 71


def test_energy_integrated_from_power_samples(monkeypatch):
    monkeypatch.setattr(gpu, "pynvml", RecordedNVML(power_mw=[100_000, 120_000, 140_000], energy_supported=False))
    ticks = iter([0, 1_000_000_000, 2_000_000_000])
    s = gpu.PowerSampler(clock=lambda: next(ticks))
    s.available, s._handle, s._t0_ns = True, ("gpu", 0), 0
    s.sample_once(), s.sample_once(), s.sample_once()
    # trapezoids: (100 + 120)/2 · 1 s + (120 + 140)/2 · 1 s = 240 J
    assert s.energy_j() == pytest.approx(240.0)
    assert metrics.mean_power_w(s.energy_j(), s.duration_s()) == pytest.approx(120.0)
    assert metrics.tokens_per_joule(480, s.energy_j()) == pytest.approx(2.0)


def test_runs_carry_a_power_block_when_a_gpu_is_sampled(monkeypatch, tmp_path, results_dir):
    monkeypatch.setattr(gpu, "pynvml", RecordedNVML(energy_mj=[5_000_000, 5_040_000]))
    with FakeOllama(token_s=0.001) as a, FakeOllama(token_s=0.001) as b:
        def external(d):
            d["runtime"] = {"kind": "external", "endpoints": [{"name": "a", "url": a.url, "api": "ollama"},
                                                              {"name": "b", "url": b.url, "api": "ollama"}]}
            d["models"] = [{"name": "gemma3:latest", "baseline": True}]
        loaded = load_profile(smoke_variant(tmp_path, external))
        plan = build_plan(loaded.profile)
        store = Store("test")
        outcome = run_matrix(loaded, plan, create_runtime(loaded.profile), store, progress=False)
    assert outcome.done == 1
    (path, doc), = store.run_docs(plan.cells[0].rel_dir)
    assert schema_errors(doc) == []
    assert doc["power"]["energy_j"] == pytest.approx(40.0)
    assert doc["power"]["tokens_per_j"] == pytest.approx(16 / 40.0)  # 2 calls × 8 tokens


def test_a_failure_records_the_vram_in_use(monkeypatch, tmp_path, results_dir):
    monkeypatch.setattr(gpu, "pynvml", RecordedNVML())
    with FakeOllama() as a, FakeOllama() as b:
        def external(d):
            d["runtime"] = {"kind": "external", "endpoints": [{"name": "a", "url": a.url, "api": "ollama"},
                                                              {"name": "b", "url": b.url, "api": "ollama"}]}
            d["models"] = [{"name": "oom:latest", "baseline": True}]
        loaded = load_profile(smoke_variant(tmp_path, external))
        store = Store("test")
        outcome = run_matrix(loaded, build_plan(loaded.profile), create_runtime(loaded.profile), store,
                             progress=False)
    assert outcome.failed == 1
    (failure,) = store.failures()
    assert failure["error_kind"] == "oom" and failure["observed_vram_used_bytes"] == 9_126_805_504
    assert failure["config"]["ctx"] == 512 and failure["fallback"] == "config skipped"
