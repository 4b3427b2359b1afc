"""zfeed's benchmarks: ``python -m bench`` (see ``bench/__main__.py``).

Modules run by the Caffe Python (``caffe_feed``, ``queue_layer``) must stay
importable on Python 3.9 with numpy<2, so this package imports nothing.
"""
