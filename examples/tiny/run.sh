#!/usr/bin/env bash
# The tiny example end to end: train two personalizations of face1 on the images in images/face1, capture
# the base and both over 24 prompts, analyse, report. About a minute on a CPU. Writes models/, study.h5,
# study.h5.parts/, results/ and report/ beside this file; run it from anywhere: bash examples/tiny/run.sh
set -euo pipefail
cd "$(dirname "$0")"
cemaps personalize -q --base cemaps/tiny-sd --method lora --images images/face1 --token sks --class-word woman \
  --steps 20 --learning-rate 1e-3 --out models/lora-face1 --overwrite
cemaps personalize -q --base cemaps/tiny-sd --method textual_inversion --images images/face1 --token "<sks-face1>" \
  --class-word woman --steps 20 --learning-rate 5e-2 --out models/ti-face1 --overwrite
cemaps capture -q --config study.yaml
cemaps analyze -q study.h5 --out results --n-perm 99
cemaps report -q results --out report
