#!/usr/bin/env bash
# Regenerates the images' lock files (<image>.txt) from their <image>.in files,
# at the versions installed in .venv, with a sha256 for every file: for
# CPython 3.11.16 (the Python of the pinned python:3.11-slim-bookworm base) on
# linux x86_64 (manylinux_2_28), wheels only.
#
#   docker/requirements/compile.sh                 # every lock
#   docker/requirements/compile.sh inference-cpu   # one lock
#
# Needs uv (a throwaway venv is enough: python3 -m venv /tmp/uv &&
# /tmp/uv/bin/pip install uv==0.13.9, then UV=/tmp/uv/bin/uv) and the project's
# .venv (make test creates it). Environment:
#   UV                 the uv binary (default: uv on PATH)
#   VENV               the venv whose versions the images must run (default: .venv)
#   TORCH_CPU_WHEELS   where torch's +cpu builds are listed (default: PyTorch's
#                      CPU index page for torch); a folder holding the wheel works too
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# uv writes the .in files' paths into the locks relative to the working directory.
cd "$root"
uv="${UV:-uv}"
venv="${VENV:-$root/.venv}"
torch_cpu_wheels="${TORCH_CPU_WHEELS:-https://download.pytorch.org/whl/cpu/torch/}"
# What pip in the image reads to find torch's +cpu build (the hash pins the file).
torch_cpu_index_line="--extra-index-url https://download.pytorch.org/whl/cpu"

# Type-checking only: feast asks for SQLAlchemy[mypy], whose extra brings mypy
# (60 MB, compiled) and these; no code imports them at run time. The images
# install their lock with --no-deps, then pip check (which does not follow
# extras) proves the lock whole without them.
not_shipped=(mypy mypy-extensions librt ast-serialize pathspec types-greenlet)

images=("$@")
if [ ${#images[@]} -eq 0 ]; then
  images=(build functions inference-cpu inference-gpu training-cpu training-gpu)
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The versions tested here are the versions shipped: every package .venv has
# constrains the resolution (the project itself, installed editable, aside).
"$venv/bin/python" -m pip freeze --all --exclude-editable >"$work/venv.txt"
# The CUDA build of torch has the same version without the +cpu label.
grep -v '^torch==' "$work/venv.txt" >"$work/venv-without-torch.txt"

for image in "${images[@]}"; do
  constraints="$work/venv.txt"
  extra=()
  case "$image" in
    training-gpu) constraints="$work/venv-without-torch.txt" ;;
    training-cpu) extra=(--find-links "$torch_cpu_wheels") ;;
  esac
  no_emit=()
  if [ "$image" != build ]; then
    for package in "${not_shipped[@]}"; do no_emit+=(--no-emit-package "$package"); done
  fi
  "$uv" pip compile "$here/$image.in" \
    --no-config \
    --python-version 3.11.16 \
    --python-platform x86_64-manylinux_2_28 \
    --only-binary :all: \
    --generate-hashes \
    --constraint "$constraints" \
    "${extra[@]}" \
    "${no_emit[@]}" \
    --custom-compile-command "docker/requirements/compile.sh $image" \
    --quiet \
    --output-file "$work/$image.txt"
  # The constraints file is a temporary one: name what it held instead.
  sed -i -E "s|-c $work/[a-z-]+\.txt|-c pip freeze of .venv|" "$work/$image.txt"
  if [ "$image" = training-cpu ]; then
    { echo "$torch_cpu_index_line"; cat "$work/$image.txt"; } >"$here/$image.txt"
  else
    cp "$work/$image.txt" "$here/$image.txt"
  fi
  echo "wrote docker/requirements/$image.txt ($(grep -cE '^[A-Za-z0-9]' "$here/$image.txt") packages)"
done
