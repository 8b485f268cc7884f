"""Random-weight replicas of GGUF models, for the GPU proof (scripts/gpu-proof.sh).

The proof machine takes at most 64 MiB of files, and the two small models are 351 MB (Gemma 3
270M Q4_K_M 253 MB, SmolLM2 135M Q4_1 98 MB). What travels instead is a *skeleton* of each: every
metadata key (architecture, hyperparameters, the whole tokenizer) and the name, shape and type of
every tensor, a few MB compressed. There, the replica is rebuilt: the same tensors in F16 (F32
where the original is F32) drawn from a seeded normal distribution, then quantized by
llama-quantize to the original's file type, which picks the same per-tensor types
(`compare` checks that). A replica has the original's architecture, sizes, kernels and VRAM,
so decode speed and memory match; its text is meaningless, and power, which depends slightly on
the data, is that of random weights.

    python -m bench.standalone.replica skeleton MODEL.gguf OUT.json.gz
    python -m bench.standalone.replica build OUT.json.gz REPLICA-F16.gguf [--seed 116]
    llama-quantize REPLICA-F16.gguf REPLICA.gguf "$(python -m bench.standalone.replica ftype OUT.json.gz)"
    python -m bench.standalone.replica compare OUT.json.gz REPLICA.gguf
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType

# Keys the writer sets itself, or that describe the file rather than the model.
HEADER_KEYS = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture"}
F16_FILE_TYPE = 1  # LLAMA_FTYPE_MOSTLY_F16: the replica before quantization


def _plain(value):
    """numpy scalars and arrays from GGUFReader as JSON-able Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_skeleton(model: Path, out: Path) -> dict:
    reader = GGUFReader(model)
    digest = hashlib.sha256()
    with model.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    skeleton = {
        "source": model.name, "source_sha256": digest.hexdigest(), "source_bytes": model.stat().st_size,
        "arch": reader.fields["general.architecture"].contents(),
        "fields": [{"name": f.name, "types": [int(t) for t in f.types], "value": _plain(f.contents())}
                   for f in reader.fields.values() if f.name not in HEADER_KEYS],
        "tensors": [{"name": t.name, "ne": [int(n) for n in t.shape], "type": t.tensor_type.name}
                    for t in reader.tensors],
    }
    with gzip.open(out, "wt", encoding="utf-8") as fh:
        json.dump(skeleton, fh)
    return skeleton


def load_skeleton(path: Path) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def file_type_name(skeleton: dict) -> str:
    """The llama-quantize type of the original, e.g. 'Q4_K_M' (from general.file_type)."""
    ftype = next(f["value"] for f in skeleton["fields"] if f["name"] == "general.file_type")
    return LlamaFileType(ftype).name.removeprefix("MOSTLY_")


def build_replica(skeleton: dict, out: Path, seed: int = 116) -> None:
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(out, arch=skeleton["arch"])
    for f in skeleton["fields"]:
        types = [GGUFValueType(t) for t in f["types"]]
        value = F16_FILE_TYPE if f["name"] == "general.file_type" else f["value"]
        writer.add_key_value(f["name"], value, types[0], sub_type=types[-1] if len(types) > 1 else None)
    for t in skeleton["tensors"]:
        shape = tuple(reversed(t["ne"]))  # GGUF lists ne0 first; numpy the slowest axis first
        dtype = np.float32 if t["type"] == "F32" else np.float16
        # N(0, 0.02²): the usual init scale, so activations stay finite through every layer
        writer.add_tensor(t["name"], (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def compare(skeleton: dict, replica: Path) -> tuple[bool, str]:
    """Whether the replica has the original's tensors (names, shapes, types), with a summary."""
    got = {t.name: ([int(n) for n in t.shape], t.tensor_type.name) for t in GGUFReader(replica).tensors}
    want = {t["name"]: (t["ne"], t["type"]) for t in skeleton["tensors"]}
    diffs = [f"{n}: original {want.get(n)}, replica {got.get(n)}" for n in sorted(set(got) | set(want))
             if got.get(n) != want.get(n)]
    hist = lambda d: ", ".join(f"{k} {v}" for k, v in sorted(Counter(t for _, t in d.values()).items()))  # noqa: E731
    lines = [f"{skeleton['source']} ({skeleton['source_bytes']:,} bytes, sha256 {skeleton['source_sha256'][:16]}…)",
             f"  original tensor types: {hist(want)}", f"  replica tensor types:  {hist(got)}",
             f"  replica file: {replica.stat().st_size:,} bytes"]
    lines += [f"  differs: {d}" for d in diffs[:10]]
    return not diffs, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.standalone.replica", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("skeleton", help="write a model's skeleton (metadata + tensor list)")
    s.add_argument("model", type=Path)
    s.add_argument("out", type=Path)
    b = sub.add_parser("build", help="write an F16 random-weight replica from a skeleton")
    b.add_argument("skeleton", type=Path)
    b.add_argument("out", type=Path)
    b.add_argument("--seed", type=int, default=116)
    q = sub.add_parser("ftype", help="print the original's llama-quantize type")
    q.add_argument("skeleton", type=Path)
    c = sub.add_parser("compare", help="check a quantized replica against its skeleton")
    c.add_argument("skeleton", type=Path)
    c.add_argument("replica", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "skeleton":
        sk = write_skeleton(args.model, args.out)
        print(f"{args.out}: {len(sk['fields'])} keys, {len(sk['tensors'])} tensors, {args.out.stat().st_size:,} bytes")
    elif args.cmd == "build":
        build_replica(load_skeleton(args.skeleton), args.out, args.seed)
    elif args.cmd == "ftype":
        print(file_type_name(load_skeleton(args.skeleton)))
    else:
        ok, text = compare(load_skeleton(args.skeleton), args.replica)
        print(text)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
