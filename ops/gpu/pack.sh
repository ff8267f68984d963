#!/usr/bin/env bash
# Pack what the GPU checks need into .gpu/ (ignored by git), for the device tool's `carry`.
#
# The lent GPU machine has Python 3.12 with PyTorch, ONNX, ONNX Runtime, NumPy, Pillow and pytest but
# no registry and no ../shared: this script downloads the project's other pure dependencies as
# cp312 wheels (the versions this checkout's .venv runs) and copies a small real-data subset (NY-SBU
# axial CT slices, a few COVID-CT images) in ../shared/data's layout. Then, in a session with a GPU:
#   device run  carry=[".gpu"]  command="bash ops/gpu/check.sh"
# (.gpu stays under the 64 MiB a call may carry; the script prints its size).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
shared="${TRIAGE_SHARED_DATA:-$repo/../shared/data}"
kit="$repo/.gpu"
python="$repo/.venv/bin/python"
[ -x "$python" ] || { echo "pack: run 'bash ops/setup.sh' first (the versions come from .venv)" >&2; exit 2; }
[ -d "$shared/dicom" ] || { echo "pack: no real data at $shared (set TRIAGE_SHARED_DATA)" >&2; exit 2; }
rm -rf "$kit"
mkdir -p "$kit/wheels" "$kit/data"

# pure-Python or cp312 wheels of what engine/, ops/ and tests/conftest.py import beyond the GPU image
names=(pydicom SQLAlchemy alembic Mako pydantic pydantic_core pydantic-settings annotated-types
       typing-inspection python-dotenv)
specs=()
for name in "${names[@]}"; do
  version="$("$python" -m pip show "$name" 2>/dev/null | awk '/^Version:/{print $2}')"
  [ -n "$version" ] || { echo "pack: $name is not installed in .venv" >&2; exit 2; }
  specs+=("$name==$version")
done
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "${KIT_PYTHON_VERSION:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$kit/wheels" "${specs[@]}" >&2

# real data in ../shared/data's layout, trimmed to fit a call: every axial NY-SBU slice; the first 8
# images of each COVID-CT split and class with split files listing only those; 16 CXR rows per split
"$python" - "$shared" "$kit/data" <<'PY'
import csv, shutil, sys
from pathlib import Path
shared, kit = Path(sys.argv[1]), Path(sys.argv[2])
for src in sorted((shared / "dicom" / "ct-covid19-ny-sbu").glob("*/axial/*.dcm")):
    dst = kit / src.relative_to(shared)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
for cls in ("COVID", "NonCOVID"):
    for split in ("train", "val", "test"):
        listing = shared / "covid-ct" / "Data-split" / cls / f"{split}CT_{cls}.txt"
        names = [n.strip() for n in listing.read_text(encoding="utf-8").splitlines() if n.strip()][:8]
        out = kit / listing.relative_to(shared)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(names) + "\n", encoding="utf-8")
        for name in names:
            dst = kit / "covid-ct" / "Images" / f"CT_{cls}" / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(shared / "covid-ct" / "Images" / f"CT_{cls}" / name, dst)
with (shared / "cxr" / "labels.csv").open(newline="", encoding="utf-8") as fh:
    reader = csv.DictReader(fh)
    rows, kept = list(reader), []
    fields = reader.fieldnames
for split in ("train", "val", "test"):
    kept += [r for r in rows if r["split"] == split][:16]
(kit / "cxr" / "images").mkdir(parents=True, exist_ok=True)
with (kit / "cxr" / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
    writer = csv.DictWriter(fh, fieldnames=fields)
    writer.writeheader()
    writer.writerows(kept)
for row in kept:
    shutil.copy2(shared / "cxr" / "images" / row["file"], kit / "cxr" / "images" / row["file"])
PY
cp "$shared/README.md" "$kit/data/"
du -sh "$kit" "$kit/wheels" "$kit/data" >&2
echo "pack: ready; carry .gpu and run: bash ops/gpu/check.sh" >&2
