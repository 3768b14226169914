#!/usr/bin/env bash
# Installs what the build and the tests need, by Debian and PyPI package names.
# Skips anything already present; needs root (or sudo) only when something is missing.
set -euo pipefail
apt_pkgs=(build-essential clang pkg-config cmake python3 python3-pip
          libmicrohttpd-dev libcjson-dev) # the last two: `kvq serve`
# --arm64: the AArch64 cross compiler and qemu-user for `make test-arm64`
# --fuzz: clang's libFuzzer runtime for `make fuzz-smoke`
# --hf: torch and transformers for kvq.hf's tests (`make test-python`). Not in CI: PyPI's
#       torch for Linux x86-64 brings its CUDA libraries, about 5 GB installed, and the
#       kvq.hf tests skip cleanly without it.
hf=0
for a in "$@"; do
    case "$a" in
    --arm64) apt_pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user) ;;
    --fuzz) apt_pkgs+=(libclang-rt-14-dev) ;;
    --hf) hf=1 ;;
    *) echo "deps.sh: unknown option $a" >&2; exit 2 ;;
    esac
done
missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
# openai: the `kvq serve` tests drive it with the official client; safetensors: the
# interop test reads the library's files with the reference reader
py_pkgs=(numpy pytest openai safetensors)
[ "$hf" = 1 ] && py_pkgs+=(torch transformers)
for p in "${py_pkgs[@]}"; do
    python3 -c "import $p" >/dev/null 2>&1 || python3 -m pip install -q "$p"
done
# the wheel's test builds in an isolated environment from PyPI's setuptools; pip's venv
# module comes with python3 (Debian: python3-venv)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || echo "deps.sh: python3 has no venv/ensurepip: the wheel test will skip" >&2
