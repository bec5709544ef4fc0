#!/usr/bin/env bash
# Installs the Vulkan loader and Mesa's Vulkan drivers, lavapipe among them: a software GPU on
# which `cargo test --features wgpu` runs kiln's GPU code path on a machine without a GPU.
# A real GPU needs only its vendor's Vulkan driver (and the loader, libvulkan1).
# Needs root (or sudo) and the Debian package index. Safe to run more than once.
set -euo pipefail
if ls /usr/lib/x86_64-linux-gnu/libvulkan.so.1 > /dev/null 2>&1 \
    && ls /usr/share/vulkan/icd.d/lvp_icd*.json > /dev/null 2>&1; then
    echo "vulkan loader, lavapipe: already installed"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libvulkan1 mesa-vulkan-drivers
ls /usr/share/vulkan/icd.d/
