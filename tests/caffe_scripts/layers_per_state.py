"""Which layers real Caffe keeps in a net, for each of several net states.

Usage: layers_per_state.py NET.prototxt STATES.json. STATES: [{"phase":
"train"|"test", "level": N, "stages": [...]}, ...]. Prints a JSON list: for
each state, the names of the layers caffe.Net builds (Caffe's FilterNet).
The net's stages come on top of the prototxt's own ``state``, as the solver
adds its train_state/test_state.
"""

import json
import sys

import caffe

net_path, states_path = sys.argv[1:3]
with open(states_path) as f:
    states = json.load(f)
caffe.set_mode_cpu()
kept = []
for state in states:
    phase = caffe.TRAIN if state["phase"] == "train" else caffe.TEST
    net = caffe.Net(net_path, phase, level=state["level"], stages=state["stages"])
    kept.append(list(net._layer_names))
    del net
print(json.dumps(kept))
