"""Prints, as JSON, every scalar that TensorBoard's own reader (EventAccumulator) finds in an
event folder: {"tag": [[step, value], ...]}, in the order TensorBoard keeps them. Used by
tests/runner.rs to check pipe's event files: python3 scripts/tb_scalars.py FOLDER"""

import json
import sys

from tensorboard.backend.event_processing import event_accumulator as ea

acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0})  # 0: keep every point
acc.Reload()
print(json.dumps({tag: [[s.step, s.value] for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}))
