"""Generate the checked-in stubs in asympo/proto/v1 from proto/asympo/v1/*.proto (`make proto`)."""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
STUB_DIR = Path(__file__).resolve().parent / "v1"
PROTO_FILES = ("bus", "reward", "rollout", "learner")

# protoc names imports after the proto package (asympo.v1); the stubs live one level down in
# asympo.proto.v1 so that they do not shadow the asympo library itself.
_IMPORT_RE = re.compile(r"^(from|import) asympo\.v1(\b)", re.MULTILINE)
_MODULE_RE = re.compile(r"'asympo\.v1\.(\w+_pb2)'")


def _stub_names(name: str) -> list[str]:
    return [f"{name}_pb2.py", f"{name}_pb2.pyi", f"{name}_pb2_grpc.py"]


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc on every asympo.v1 proto and write the import-fixed stubs into out_dir."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit("grpcio-tools is missing: install the dev extra (pip install -e '.[dev]')") from exc
    import grpc_tools

    sources = [proto_root / "asympo" / "v1" / f"{name}.proto" for name in PROTO_FILES]
    missing = [str(p) for p in sources if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"proto sources not found: {', '.join(missing)}")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p.relative_to(proto_root)) for p in sources],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed; see the messages above")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in PROTO_FILES:
            for stub in _stub_names(name):
                text = (Path(tmp) / "asympo" / "v1" / stub).read_text()
                target = out_dir / stub
                text = _IMPORT_RE.sub(r"\1 asympo.proto.v1\2", text)
                target.write_text(_MODULE_RE.sub(r"'asympo.proto.v1.\1'", text))
                written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """Regenerate the stubs in place (or into --out)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=STUB_DIR, help="output directory")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
