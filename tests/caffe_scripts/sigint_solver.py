"""The Python side of tests/sigint_host.c: a real Caffe solver, stepped by the host.

Usage (through sigint_host): SOLVER.prototxt. Defines step() (one solver
iteration) and snapshot() (Caffe's own, under the solver's snapshot_prefix).
"""

import sys

import caffe

caffe.set_mode_cpu()
solver = caffe.get_solver(sys.argv[1])


def step():
    solver.step(1)


def snapshot():
    solver.snapshot()
