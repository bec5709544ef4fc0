#!/usr/bin/env bash
# Installs the data sets that examples and the long test suites use beyond the built-in ones.
#   Fashion-MNIST (Debian package dataset-fashion-mnist) -> /usr/share/datasets/fashion-mnist/
# Needs root (or sudo) and the Debian package index. Safe to run more than once.
set -euo pipefail
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    echo "fashion-mnist: already installed"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
ls /usr/share/datasets/fashion-mnist/
