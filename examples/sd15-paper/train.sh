#!/usr/bin/env bash
# Trains the 45 personalizations that study.yaml lists, with cemaps' trainers (diffusers' example scripts'
# defaults: DreamBooth 400 steps at lr 5e-6, LoRA rank 4 500 steps at lr 1e-4, Textual Inversion 3000 steps
# at lr 5e-4; README "Training personalizations"), into models/ beside this file.
# EDIT: BASE, and PHOTOS: one folder of training images per subject id (photos/face1, photos/object1, ...).
# Run it from anywhere: bash examples/sd15-paper/train.sh   (DRY=1 prints the commands instead)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BASE="${BASE:-/models/stable-diffusion-v1-5}"
PHOTOS="${PHOTOS:-$HERE/photos}"
GPU_FLAGS="--device cuda --mixed-precision bf16 --gradient-checkpointing"   # fp16 on pre-Ampere cards
run() { if [ "${DRY:-0}" = 1 ]; then echo "$*"; else "$@"; fi; }
# subject id, class word (cemaps' subjects15: src/cemaps/data/subjects.csv)
while IFS=, read -r subject class_word; do
  run cemaps personalize --base "$BASE" --method dreambooth --images "$PHOTOS/$subject" --token sks \
    --class-word "$class_word" --out "$HERE/models/db-$subject" $GPU_FLAGS
  run cemaps personalize --base "$BASE" --method lora --images "$PHOTOS/$subject" --token sks \
    --class-word "$class_word" --out "$HERE/models/lora-$subject" $GPU_FLAGS
  run cemaps personalize --base "$BASE" --method textual_inversion --images "$PHOTOS/$subject" \
    --token "<sks-$subject>" --class-word "$class_word" --out "$HERE/models/ti-$subject" $GPU_FLAGS
done <<'SUBJECTS'
face1,woman
face2,man
face3,man
face4,person
face5,woman
object1,mug
object2,backpack
object3,car
object4,vase
object5,sneaker
style1,painting
style2,painting
style3,sketch
style4,print
style5,illustration
SUBJECTS
