"""What the demo, the tests and the benchmarks share to run zfeed for real.

- ``harness.children``: child processes (free ports, death with the parent,
  ``ChildError``, start and stop with deadlines, waiting for a server's
  ``--ready-file``);
- ``harness.netns``: hosts in network namespaces joined by a bridge;
- ``harness.datasets``: small real data sets (images, npz, Datum LMDBs,
  image lists);
- ``harness.trainer_probe``: a trainer stand-in run as a child
  (``python -m harness.trainer_probe``).

Why a top-level package: ``demo``, ``tests`` and ``bench`` are run from the
repository root (``python -m demo``, ``python -m pytest``, ``python -m
bench.X``), which puts the root on ``sys.path``; ``./dev`` also sets
``PYTHONPATH`` to it. A sibling package is therefore importable from all
three without any ``sys.path`` edit, and none of them depends on another:
the benchmarks do not import test modules, nor the tests benchmark ones to
start processes. It is not in ``server/`` or ``client_layer/`` because it
is not shipped: ``pyproject.toml`` packages those two only, and nothing in
them imports this one (this one uses ``server.parent_death``, the server's
own death-signal set-up, the only one in the repository) (``client_layer`` must run with numpy, pyzmq and
msgpack alone, on Python 3.8 to 3.13).
"""
