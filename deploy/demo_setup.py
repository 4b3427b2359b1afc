"""The demo's data set and prototxts in one folder, for the demo in containers.

    python deploy/demo_setup.py DIR [--iterations N] [--timeout-s S]
        [(--train-bind ENDPOINT | --train-address ENDPOINT...)
         (--test-bind ENDPOINT | --test-address ENDPOINT...)]

The ``demo-dataset`` image runs this: docker-compose.yml's one-shot
``dataset`` service, and the init containers of deploy/k8s/. It builds what
``python -m demo`` builds (``demo.dataset.build_dataset`` with the demo's
seed, so every run and every pod gets the same bytes), unless DIR already
holds it. Given the endpoints (a trainer needs them, a data server does
not), it then (re)writes the net and solver with the demo's own
``write_prototxts``. Each data layer then either binds (``--*-bind``: the
servers dial in with ``--connect``, so that more servers need no change on
the trainer) or connects to every listed server (``--*-address``: one per
StatefulSet pod). The trainer then runs exactly what the demo runs:
``python demo/train.py DIR/lenet_digits_solver.prototxt --test-samples ...``.

Exit status: 0 when DIR is ready, 2 for bad options or a half-built DIR.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

from demo.nets import DEFAULT_ITERATIONS, NET_TEMPLATE, SEED, write_prototxts
from demo.dataset import DigitsDataset, build_dataset

DATASET_RECORD = "dataset.json"  # written last: its presence means the data set is complete
PATH_FIELDS = ("train_lmdb", "test_lmdb", "mean_file")
# write_prototxts() puts one address in each data layer; these stand-ins are then replaced.
TRAIN_STAND_IN = "tcp://train.invalid:1"
TEST_STAND_IN = "tcp://test.invalid:1"
PARAM_STR = re.compile(r"param_str: '(\{[^']*\})'")


class SetupError(RuntimeError):
    """DIR cannot be used; the message says what to do."""


def load_or_build(folder: Path) -> DigitsDataset:
    """The data set in ``folder``: the one recorded there, else a new one built there."""
    record = folder / DATASET_RECORD
    if record.exists():
        fields = json.loads(record.read_text())
        for name in PATH_FIELDS:
            fields[name] = Path(fields[name])
        fields["image_shape"] = tuple(fields["image_shape"])
        print("demo_setup: reusing the data set in %s" % folder, flush=True)
        return DigitsDataset(**fields)
    if any(entry.name != "lost+found" for entry in folder.iterdir()):  # a new ext4 volume has one
        raise SetupError("%s holds files but no %s (a build that did not finish?): empty it "
                         "(docker compose down -v) and retry" % (folder, DATASET_RECORD))
    print("demo_setup: building the digits data set in %s" % folder, flush=True)
    dataset = build_dataset(folder, seed=SEED)
    fields = {name: str(value) if isinstance(value, Path) else value
              for name, value in dataclasses.asdict(dataset).items()}
    partial = folder / (DATASET_RECORD + ".partial")
    partial.write_text(json.dumps(fields, indent=1) + "\n")
    os.replace(partial, record)
    return dataset


def point_data_layers(net_text: str, endpoints: Dict[str, dict]) -> str:
    """``net_text`` with each stand-in ``"address"`` of a ``param_str`` replaced by ``endpoints[stand_in]``."""
    replaced: List[str] = []

    def replace(match: "re.Match[str]") -> str:
        params = json.loads(match.group(1))
        stand_in = params.get("address")
        if stand_in not in endpoints:
            return match.group(0)
        del params["address"]
        params.update(endpoints[stand_in])
        replaced.append(stand_in)
        return "param_str: '%s'" % json.dumps(params)

    text = PARAM_STR.sub(replace, net_text)
    if sorted(replaced) != sorted(endpoints):
        raise ValueError("expected one data layer for each of %s in the net, replaced %s"
                         % (sorted(endpoints), sorted(replaced)))
    return text


def layer_params(bind: Optional[str], addresses: List[str], timeout_s: Optional[float]) -> dict:
    params: dict = {"bind": bind} if bind else {"address": addresses if len(addresses) > 1 else addresses[0]}
    if timeout_s is not None:
        params["timeout_s"] = timeout_s
    return params


def _endpoint(text: str) -> str:
    if not text.startswith("tcp://") or "'" in text or '"' in text:
        raise argparse.ArgumentTypeError("expected tcp://HOST:PORT, got %r" % text)
    return text


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="demo_setup", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where the data set and prototxts go (created if missing)")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                        help="training iterations (default %d, as python -m demo)" % DEFAULT_ITERATIONS)
    parser.add_argument("--timeout-s", type=float,
                        help="the data layers' wait for a batch (default: the demo's)")
    for phase in ("train", "test"):
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--%s-bind" % phase, type=_endpoint, metavar="ENDPOINT",
                           help="the %s layer binds here; its servers run with --connect" % phase)
        where.add_argument("--%s-address" % phase, type=_endpoint, action="append", metavar="ENDPOINT",
                           help="a %s server the layer connects to; repeat for each" % phase)
    args = parser.parse_args(argv)
    if args.iterations < 2:
        parser.error("--iterations must be at least 2")
    if bool(args.train_bind or args.train_address) != bool(args.test_bind or args.test_address):
        parser.error("give the endpoints of both data layers (--train-* and --test-*), or of neither")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    folder = args.folder.resolve()  # the solver names the net by this path
    folder.mkdir(parents=True, exist_ok=True)
    try:
        dataset = load_or_build(folder)
    except SetupError as exc:
        print("demo_setup: error: %s" % exc, file=sys.stderr)
        return 2
    print("demo_setup: %d train and %d test images in %s" % (dataset.train_count, dataset.test_count, folder),
          flush=True)
    if not (args.train_bind or args.train_address):
        return 0
    solver = write_prototxts(folder, dataset, TRAIN_STAND_IN, TEST_STAND_IN, args.iterations)
    net = folder / NET_TEMPLATE.name  # where write_prototxts() put the net
    net.write_text(point_data_layers(net.read_text(), {
        TRAIN_STAND_IN: layer_params(args.train_bind, args.train_address or [], args.timeout_s),
        TEST_STAND_IN: layer_params(args.test_bind, args.test_address or [], args.timeout_s)}))
    print("demo_setup: wrote %s (%d iterations) and %s" % (solver, args.iterations, net), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
