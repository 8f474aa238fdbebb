#!/bin/sh
# What the token check costs: the check alone (ns per call) and sequential
# unary Add through a real server with and without a token (p50, calls/s).
# Figures in bench/RESULTS.md ("Auth: the token check per call").
set -eu
cd "$(dirname "$0")/.."
cargo run --release -q -p distribusync-server --example auth_bench
