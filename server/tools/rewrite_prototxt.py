"""Copy a Caffe net prototxt with its data layers replaced by zfeed layers.

Run as ``python -m server.tools.rewrite_prototxt NET OUT --train tcp://HOST:PORT
[--test tcp://HOST:PORT] [--layer NAME=ENDPOINT ...]``. Every Data, ImageData
and HDF5Data layer that gets an address becomes a ``Python`` layer running
``client_layer.ZmqDataLayer`` with the same name, tops (in the same order),
``include``/``exclude`` rules and other generic fields; its ``param_str``
connects to the address and maps the served arrays to the tops. Everything
else in the file, comments included, is copied byte for byte (see NOTE
[ Reading a prototxt ] in server/prototxt.py).

A layer's address is the one given for its name (``--layer``), else the one
for the phase it runs in (``--train``/``--test``). A layer that runs in both
phases, or two layers of one phase, need ``--layer``: one server serves one
layer. Data layers that get no address are kept, and listed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from google.protobuf import text_format

from client_layer.receiver import DEFAULT_TIMEOUT_S
from server.caffe_proto import LayerParameter
from server.endpoints import endpoint_problem
from server.prototxt import (DATA_LAYER_TYPES, TEST, TRAIN, LayerBlock, NetText, PrototxtError,
                             layer_runs, net_state, parse_layer, scan_net)
from server.sources import DEFAULT_DATASETS

_DATA_PARAMS = ("transform_param", "data_param", "image_data_param", "hdf5_data_param")


@dataclass(frozen=True)
class Replacement:
    block: LayerBlock
    layer: LayerParameter
    phases: Tuple[str, ...]
    endpoint: str


def served_arrays(layer: LayerParameter) -> List[str]:
    """The arrays a zfeed server sends for ``layer``, in top order."""
    if layer.type == "HDF5Data":
        return list(layer.top)
    return list(DEFAULT_DATASETS[:len(layer.top)])


def _quote(text: str) -> str:
    return "'%s'" % text.replace("\\", "\\\\").replace("'", "\\'")


def zfeed_layer_text(layer: LayerParameter, endpoint: str, timeout_s: float, comment: str) -> str:
    """The text of a ZmqDataLayer replacing data layer ``layer`` (unindented, no final newline)."""
    python = LayerParameter()
    python.CopyFrom(layer)
    for field in _DATA_PARAMS:
        python.ClearField(field)
    python.type = "Python"
    params = json.dumps({"address": endpoint, "tops": served_arrays(layer), "timeout_s": timeout_s})
    lines = ["layer {", "  # " + comment]
    lines += ["  " + line for line in text_format.MessageToString(python).splitlines()]
    lines += ["  python_param {", '    module: "client_layer"', '    layer: "ZmqDataLayer"',
              "    param_str: %s" % _quote(params), "  }", "}"]
    return "\n".join(lines)


def _indent(text: str, column: int) -> str:
    return text.replace("\n", "\n" + " " * column)


def plan_replacements(net: NetText, phase_endpoints: Dict[str, str], layer_endpoints: Dict[str, str],
                      level: Optional[int] = None, stages: Sequence[str] = ()) -> Tuple[List[Replacement],
                                                                                        List[str]]:
    """Which data layers get which address, and the names of the data layers kept."""
    states = {phase: net_state(net, phase, level, stages) for phase in (TRAIN, TEST)}
    replacements, kept = [], []
    unused_names = set(layer_endpoints)
    for block in net.layers:
        if block.type not in DATA_LAYER_TYPES:
            continue
        layer = parse_layer(net, block)
        phases = tuple(phase for phase in (TRAIN, TEST) if layer_runs(layer, states[phase]))
        where = "%s:%d layer %r (%s)" % (net.path, block.line, layer.name, layer.type)
        if layer.name in layer_endpoints:
            unused_names.discard(layer.name)
            endpoint = layer_endpoints[layer.name]
        elif len(phases) == 1 and phases[0] in phase_endpoints:
            endpoint = phase_endpoints[phases[0]]
        elif len(phases) == 2 and phase_endpoints:
            raise PrototxtError("%s runs in both phases: give it its own server with --layer %s=ENDPOINT"
                                % (where, layer.name))
        else:
            kept.append(where)
            continue
        replacements.append(Replacement(block, layer, phases, endpoint))
    if unused_names:
        raise PrototxtError("%s has no data layer named %s" % (net.path, ", ".join(sorted(unused_names))))
    for phase in (TRAIN, TEST):
        by_endpoint: Dict[str, List[str]] = {}
        for replacement in replacements:
            if phase in replacement.phases:
                by_endpoint.setdefault(replacement.endpoint, []).append(replacement.layer.name)
        for endpoint, names in by_endpoint.items():
            if len(names) > 1:
                raise PrototxtError("%s: data layers %s of phase %s would share %s, and split its batches: "
                                    "give each its own server with --layer NAME=ENDPOINT"
                                    % (net.path, ", ".join(map(repr, names)), phase.upper(), endpoint))
    return replacements, kept


def rewrite_net(net: NetText, replacements: Sequence[Replacement], timeout_s: float,
                source_name: str) -> str:
    """``net``'s text with each replaced block swapped for its zfeed layer."""
    pieces, position = [], 0
    for replacement in sorted(replacements, key=lambda r: r.block.start):
        block = replacement.block
        column = block.start - (net.text.rfind("\n", 0, block.start) + 1)
        phase = replacement.phases[0] if len(replacement.phases) == 1 else TRAIN
        comment = ("zfeed: was %s layer %r; serve it with: python -m server --from-prototxt %s "
                   "--phase %s%s" % (replacement.layer.type, replacement.layer.name, source_name, phase,
                                     " --layer %s" % replacement.layer.name if len(replacement.phases) != 1
                                     else ""))
        text = zfeed_layer_text(replacement.layer, replacement.endpoint, timeout_s, comment)
        pieces += [net.text[position:block.start], _indent(text, column)]
        position = block.end
    pieces.append(net.text[position:])
    return "".join(pieces)


def _endpoint(text: str, option: str) -> str:
    problem = endpoint_problem(text)
    if problem:
        raise argparse.ArgumentTypeError("%s %r: %s" % (option, text, problem))
    return text


def _layer_endpoint(text: str) -> Tuple[str, str]:
    name, sep, endpoint = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError("--layer %r: expected NAME=tcp://HOST:PORT" % text)
    return name, _endpoint(endpoint, "--layer %s" % name)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server.tools.rewrite_prototxt",
        description="Copy a Caffe net prototxt with its Data/ImageData/HDF5Data layers replaced by "
                    "zfeed's ZmqDataLayer, connected to the given data servers.")
    parser.add_argument("net", help="the prototxt to read")
    parser.add_argument("output", help="the prototxt to write (not the input)")
    parser.add_argument("--train", type=lambda t: _endpoint(t, "--train"),
                        help="address of the server of the TRAIN phase's data layer")
    parser.add_argument("--test", type=lambda t: _endpoint(t, "--test"),
                        help="address of the server of the TEST phase's data layer")
    parser.add_argument("--layer", type=_layer_endpoint, action="append", default=[],
                        help="NAME=ENDPOINT: address of the server of the data layer NAME; repeatable")
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S,
                        help="the layer gives up after this long without a batch (default %g)"
                             % DEFAULT_TIMEOUT_S)
    parser.add_argument("--stage", action="append", default=[], help="a stage of the net state; repeatable")
    parser.add_argument("--level", type=int, default=None, help="the level of the net state")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """CLI entry point; returns the exit status (2 for a user mistake)."""
    args = _parser().parse_args(argv)
    phase_endpoints = {phase: endpoint for phase, endpoint in ((TRAIN, args.train), (TEST, args.test))
                       if endpoint}
    layer_endpoints = dict(args.layer)
    try:
        if not phase_endpoints and not layer_endpoints:
            raise PrototxtError("give at least one address: --train, --test or --layer NAME=ENDPOINT")
        if os.path.exists(args.output) and os.path.samefile(args.output, args.net):
            raise PrototxtError("%s is the input: write the rewritten net to another file" % args.output)
        with open(args.net, encoding="utf-8") as f:
            net = scan_net(f.read(), args.net)
        replacements, kept = plan_replacements(net, phase_endpoints, layer_endpoints, args.level, args.stage)
        if not replacements:
            raise PrototxtError("%s: no data layer matches the addresses given (data layers: %s)"
                                % (args.net, "; ".join(kept) or "none"))
        text = rewrite_net(net, replacements, args.timeout_s, args.net)
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    except (PrototxtError, OSError) as exc:
        print("rewrite_prototxt: error: %s" % exc, file=sys.stderr)
        return 2
    for replacement in replacements:
        print("rewrite_prototxt: layer %r (%s, %s) now reads from %s"
              % (replacement.layer.name, replacement.layer.type,
                 "/".join(p.upper() for p in replacement.phases) or "no phase", replacement.endpoint),
              file=sys.stderr)
    for where in kept:
        print("rewrite_prototxt: kept %s (no address given)" % where, file=sys.stderr)
    print("rewrite_prototxt: wrote %s" % args.output, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
