#!/usr/bin/env bash
# Open a LabelMe file that tools/predict.py --save-format labelme wrote in LabelMe itself (its PyPI package, in an
# environment of its own: it brings PyQt5) on a virtual screen, and save a screenshot of its window:
#   tests/external/labelme_screenshot.sh LABELME_PYTHON_BIN_DIR FILE.json LABELS.txt OUT.png
# Needs Debian's xvfb, imagemagick (import) and xdotool, and Qt's xcb libraries (libxcb-*, libxkbcommon-x11-0, libgl1).
set -euo pipefail
bin=$1; json=$2; labels=$3; out=$4
display=:$((90 + RANDOM % 9))
Xvfb "$display" -screen 0 1400x1000x24 >/dev/null 2>&1 &
xvfb=$!
trap 'kill $labelme $xvfb 2>/dev/null || true' EXIT
sleep 2
DISPLAY=$display "$bin/labelme" "$json" --labels "$labels" --nodata >/dev/null 2>&1 &
labelme=$!
for _ in $(seq 60); do  # until its window is there
    window=$(DISPLAY=$display xdotool search --name "labelme" 2>/dev/null | head -1 || true)
    [ -n "$window" ] && break
    sleep 0.5
done
[ -n "$window" ] || { echo "LabelMe opened no window" >&2; exit 1; }
DISPLAY=$display xdotool windowsize "$window" 1400 1000 windowmove "$window" 0 0
sleep 4  # the image and the shapes drawn
DISPLAY=$display import -window root "$out"
kill -0 "$labelme" || { echo "LabelMe exited" >&2; exit 1; }
echo "$out"
