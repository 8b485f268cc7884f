"""Where a run really ran, against what its config asked.

Ollama decides placement itself and its defaults shift silently: the context follows the VRAM,
slots follow free memory, and a large `num_ctx` spills layers to the CPU. A run whose placement
differs from its config measures something else, so it is flagged, kept out of the headline
tables, and listed in the report. llama-server is launched with explicit flags, so its runs are
flagged only when a server was not running.
"""

from __future__ import annotations

from bench.config.profile import ServerConfig


def _full_gpu_asked(cfg: ServerConfig, block_count: int | None) -> bool:
    # -1 means "all layers"; Ollama counts the output layer too, hence block_count + 1.
    return cfg.gpu_layers < 0 or (block_count is not None and cfg.gpu_layers >= block_count + 1)


def placement_issues(expected: dict[str, ServerConfig], observed: dict[str, dict], *, gpu_present: bool,
                     block_count: int | None = None) -> list[str]:
    """Differences between the load-time settings each used endpoint needed (`expected`) and what
    the engine reported at the end of the run (`observed`, from `Runtime.placement`)."""
    issues = []
    for endpoint, cfg in expected.items():
        if endpoint not in observed:
            continue  # an engine without a placement API (an external OpenAI-compatible server)
        seen = observed[endpoint]
        if not (seen.get("loaded") or seen.get("running")):
            issues.append(f"{endpoint}: model not loaded at the end of the run")
            continue
        if "size_vram_bytes" not in seen:
            continue  # llama-server: the launch flags are the placement
        share = seen.get("gpu_share")
        if gpu_present and share is not None:
            if _full_gpu_asked(cfg, block_count) and share < 0.999:
                issues.append(f"{endpoint}: only {share:.0%} of the model in GPU memory "
                              f"(asked all layers: gpu_layers {cfg.gpu_layers})")
            if cfg.gpu_layers == 0 and share > 0:
                issues.append(f"{endpoint}: {share:.0%} of the model in GPU memory although gpu_layers is 0")
        ctx = seen.get("context_length")
        if ctx is not None and ctx != cfg.ctx:
            issues.append(f"{endpoint}: context {ctx} instead of {cfg.ctx}")
    return issues
