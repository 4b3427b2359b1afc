"""Parse each param_str with the layer's LayerParams and print what it raised.

Usage: check_param_strs.py PARAM_STRS.json. Prints a JSON list with, for each
param_str, "OK" or "<ExceptionType>: <message>".
"""

import json
import sys

from client_layer.caffe_layer import LayerParams

outcomes = []
for param_str in json.load(open(sys.argv[1])):
    try:
        LayerParams(param_str)
        outcomes.append("OK")
    except Exception as exc:  # any type other than ValueError is itself a finding
        outcomes.append("%s: %s" % (type(exc).__name__, exc))
print(json.dumps(outcomes))
