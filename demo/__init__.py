"""zfeed's end-to-end demo: ``python -m demo`` (see ``demo/__main__.py``).

``dataset`` builds the digits LMDBs, ``servers`` runs the child processes,
``train.py`` is the trainer (run under the Caffe Python, not imported here),
and the ``*.prototxt`` files are the templates of the net and solver.
"""
