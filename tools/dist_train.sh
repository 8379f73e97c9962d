#!/usr/bin/env bash
# Multi-process training with torchrun: bash tools/dist_train.sh CONFIG NPROC [train.py args]
# Environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500),
# PYTHON (the repo's .venv python when present, else python). Through tools/torchrun.py: a bad
# input is one error line, as for the tool alone. Without GPUs the processes
# train on CPU with the gloo backend.
set -e
CONFIG=$1
NPROC=$2
if [ -z "$CONFIG" ] || [ -z "$NPROC" ]; then
    echo "error: usage: $0 CONFIG NPROC [train.py options]" >&2
    exit 1
fi
if ! [[ "$NPROC" =~ ^[0-9]+$ ]] || [ "$NPROC" -lt 1 ]; then
    echo "error: NPROC (processes per node) must be a positive integer, got '$NPROC'" >&2
    exit 1
fi
DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$DIR")
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
if [ -z "$PYTHON" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
PYTHONPATH="$ROOT":$PYTHONPATH \
"$PYTHON" "$DIR/torchrun.py" \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NPROC" \
    --master_port="$PORT" \
    "$DIR/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
