"""Regenerate the checked-in Python code for protos/geopunch/v1/*.proto.

Usage: python scripts/gen_protos.py [OUTPUT_ROOT [CLIENT_OUTPUT_ROOT]]

OUTPUT_ROOT defaults to src/. Writes geopunch/v1/*_pb2.py, *_pb2.pyi and
*_pb2_grpc.py below it, and the same as geopunch_client/v1/ below
CLIENT_OUTPUT_ROOT (default clients/python/src/) for the slim client
package. Needs the dev extra (grpcio-tools, mypy-protobuf).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def generate(
    out_root: Path, proto_root: Path = PROTO_ROOT, package: str = "geopunch"
) -> list[Path]:
    import grpc_tools  # dev dependency, imported lazily
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto

    protos = sorted(
        str(p.relative_to(proto_root)) for p in (proto_root / package / "v1").glob("*.proto")
    )
    out_root.mkdir(parents=True, exist_ok=True)
    plugin = shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent))
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
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
    pkg = out_root / package / "v1"
    init = pkg / "__init__.py"
    init.write_text(
        '"""Generated protobuf and gRPC code; regenerate with scripts/gen_protos.py."""\n'
    )
    return sorted(p for p in pkg.iterdir() if p.is_file())


def generate_client(out_root: Path) -> list[Path]:
    """The same code for the client package, as ``geopunch_client.v1``.

    The .proto files are copied under geopunch_client/v1/ so that the
    generated imports name the client's package; their proto package stays
    geopunch.v1, so services and messages are the same on the wire. (One
    process cannot import both packages' code: the names would clash in
    protobuf's descriptor pool.)
    """
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "geopunch_client" / "v1"
        staged.mkdir(parents=True)
        for proto in sorted((PROTO_ROOT / "geopunch/v1").glob("*.proto")):
            text = proto.read_text().replace('import "geopunch/v1/', 'import "geopunch_client/v1/')
            (staged / proto.name).write_text(text)
        return generate(out_root, Path(tmp), "geopunch_client")


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "src"
    client_target = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "clients/python/src"
    for path in generate(target):
        print(path.relative_to(target))
    for path in generate_client(client_target):
        print(path.relative_to(client_target))
