"""Command-line tools that prepare Caffe data sets (LMDBs of Datums, mean files)."""
