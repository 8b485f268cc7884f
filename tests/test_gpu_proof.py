"""The GPU proof's pieces that run anywhere: its profile, and model replicas from skeletons.
The whole script's dry run (`scripts/gpu-proof.sh run --dry-run`) takes minutes and runs by hand."""

from __future__ import annotations

import numpy as np
from gguf import GGUFReader, GGUFWriter

from bench.config.plan import build_plan
from bench.config.profile import builtin_profiles, load_profile
from bench.standalone import replica


def test_the_gpu_proof_profile_puts_every_layer_on_the_gpu():
    profile = load_profile(builtin_profiles()["gpu-proof"]).profile
    plan = build_plan(profile)
    assert profile.runtime.kind == "local" and profile.runtime.server_defaults.gpu_layers == 99
    assert {(c.suite, c.lang) for c in plan.cells} == {("single", "python"), ("single", "rust"),
                                                        ("multi", "python"), ("multi", "rust")}
    assert all(cfg.gpu_layers == 99 for c in plan.cells for _, cfg in c.agents if cfg)
    assert all(m.file.startswith(".gpu-proof-work/models/") for m in profile.models)


def test_a_replica_has_the_originals_metadata_and_tensors(tmp_path):
    original = tmp_path / "tiny.gguf"
    w = GGUFWriter(original, arch="llama")
    w.add_block_count(1)
    w.add_context_length(256)
    w.add_file_type(1)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["<s>", "</s>", "héllo", "wörld"])
    w.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float16))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    sk = replica.write_skeleton(original, tmp_path / "tiny.json.gz")
    assert sk == replica.load_skeleton(tmp_path / "tiny.json.gz")
    assert replica.file_type_name(sk) == "F16"
    out = tmp_path / "replica.gguf"
    replica.build_replica(sk, out, seed=1)
    ok, summary = replica.compare(sk, out)
    assert ok, summary
    r = GGUFReader(out)
    assert r.fields["tokenizer.ggml.tokens"].contents() == ["<s>", "</s>", "héllo", "wörld"]
    assert r.fields["llama.context_length"].contents() == 256
    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    assert emb.data.shape == (4, 8) and 0.001 < float(np.abs(emb.data).mean()) < 0.1  # N(0, 0.02²), not ones
