"""Regenerate the checked-in Python code for protos/geopunch/v1/*.proto.

Usage: python scripts/gen_protos.py [OUTPUT_ROOT]

OUTPUT_ROOT defaults to src/. Writes geopunch/v1/*_pb2.py, *_pb2.pyi and
*_pb2_grpc.py below it. Needs the dev extra (grpcio-tools, mypy-protobuf).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def generate(out_root: Path) -> list[Path]:
    import grpc_tools  # dev dependency, imported lazily
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto

    protos = sorted(
        str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "geopunch/v1").glob("*.proto")
    )
    out_root.mkdir(parents=True, exist_ok=True)
    plugin = shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_grpc_out={out_root}",
    ]
    if plugin:
        args.append(f"--plugin=protoc-gen-mypy={plugin}")
        grpc_plugin = shutil.which("protoc-gen-mypy_grpc", path=str(Path(sys.executable).parent))
        if grpc_plugin:
            args.append(f"--plugin=protoc-gen-mypy_grpc={grpc_plugin}")
    rc = protoc.main([*args, *protos])
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    pkg = out_root / "geopunch" / "v1"
    init = pkg / "__init__.py"
    init.write_text(
        '"""Generated protobuf and gRPC code; regenerate with scripts/gen_protos.py."""\n'
    )
    return sorted(p for p in pkg.iterdir() if p.is_file())


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "src"
    for path in generate(target):
        print(path.relative_to(target))
