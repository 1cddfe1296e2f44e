#!/usr/bin/env bash
# The main job end to end on sample data: make a realistic pickle cache, record it, change it,
# record again, rebuild version 1 elsewhere and prove it is identical to the original.
# Usage: scripts/demo.sh [WORKDIR]   (default: demo-out/; egds and python must be on PATH)
# WORKDIR must not exist, be empty, or be one an earlier run made; the script only ever deletes what it
# created (the entries listed in `made`, inside a directory that holds its marker file), nothing else.
set -euo pipefail
work=${1:-demo-out}
marker=.egds-demo
made=(.egds cache original-v1 restored-v1 remote clone "$marker")
if [ -e "$work" ] || [ -L "$work" ]; then
    if [ -d "$work" ] && [ ! -L "$work" ] && [ -f "$work/$marker" ]; then
        for entry in "${made[@]}"; do rm -rf "${work:?}/$entry"; done   # an earlier run's own files
    elif [ -d "$work" ] && [ ! -L "$work" ] && [ -z "$(ls -A "$work")" ]; then
        :   # an empty directory: used as it is
    else
        echo "demo.sh: $work exists and was not made by this script; nothing was removed: give a new or empty directory" >&2
        exit 2
    fi
fi
mkdir -p "$work"
touch "$work/$marker"
cd "$work"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step python -m egregora_ds.sample cache/rag --rows 20000 --months 24
cp -r cache/rag original-v1                       # kept aside only to prove the round trip below
step egds init --cache cache/rag --partition month --model models/text-embedding-004
step egds snapshot -m "first export"
step egds snapshot -m "nothing changed"           # a no-op: no new version

# The pipeline edits one chunk in an old month, deletes another and adds a new month.
python - <<'PY'
from egregora_ds.sample import append_month, delete_chunk, edit_chunk
edit_chunk("cache/rag", chunk_id=1234, text="Texto revisado da edição de março 🚀")
delete_chunk("cache/rag", chunk_id=42)
added = append_month("cache/rag", rows=800)
print(f"pipeline: edited chunk 1234, deleted chunk 42, added {len(added.chunk_ids)} chunks in {added.month}")
PY
step egds status
step egds snapshot -m "edit, delete, new month"
step egds log
step egds diff v1 v2
step egds checkout v1 --cache restored-v1
step egds verify

# Publish to a directory remote (a USB disk, a share; `ia:IDENTIFIER` for the Internet Archive),
# then bootstrap a second copy from it as anyone would, every byte verified.
step egds remote add backup remote --title "Egregora newsletter embeddings (demo)" --license CC-BY-4.0
step egds push backup
step egds push backup                              # nothing new: uploads nothing
step egds clone remote clone
step egds -C clone checkout v1 --cache restored-v1

python - <<'PY'
import json, pickle
import numpy as np

def load(path):
    with open(f"{path}/embeddings.pkl", "rb") as f:
        arr = pickle.load(f)["embeddings"]
    with open(f"{path}/metadata.json", encoding="utf-8") as f:
        meta = json.load(f)
    with open(f"{path}/index.json", encoding="utf-8") as f:
        index = json.load(f)
    return arr, meta, index

a = load("original-v1")
for copy in ("restored-v1", "clone/restored-v1"):
    b = load(copy)
    assert a[0].dtype == b[0].dtype and a[0].shape == b[0].shape, f"{copy}: shape/dtype differ"
    assert np.array_equal(a[0].view(np.uint32), b[0].view(np.uint32)), f"{copy}: vectors differ"
    assert a[1] == b[1] and a[2] == b[2], f"{copy}: metadata.json or index.json differ"
    print(f"OK: {copy} is identical to the original v1 cache ({a[0].shape[0]} x {a[0].shape[1]} {a[0].dtype}, "
          "metadata.json and index.json equal)")
PY
