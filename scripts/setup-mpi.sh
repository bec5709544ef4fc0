#!/usr/bin/env bash
# Installs what `cargo build --features mpi` and `mpirun -np N kiln train` need: Open MPI (library,
# headers and mpirun) and libclang (rsmpi generates its bindings with bindgen).
# Needs root (or sudo) and the Debian package index. Safe to run more than once.
set -euo pipefail
if command -v mpirun > /dev/null && [ -f /usr/include/x86_64-linux-gnu/openmpi/mpi.h -o -f /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] \
    && ls /usr/lib/llvm-*/lib/libclang*.so* > /dev/null 2>&1; then
    echo "openmpi, libclang: already installed ($(mpirun --version | head -1))"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenmpi-dev openmpi-bin libclang-dev
mpirun --version | head -1
