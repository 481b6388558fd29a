"""lsdata: lifelong user-behaviour sequence data, from raw dumps to leak-free Parquet layouts.

Data flows one way; one module per stage:

    ingest (lsdata.ingest.*)  raw files  -> raw event batches (+ quarantine)
    lsdata.events             raw events -> events/, sequences/, vocab/ (dense ids, sorted)
    lsdata.split              sequences  -> which user/target goes to train/valid/test (the rule)
    lsdata.samples            split      -> samples.parquet (targets, labels, negatives)
    lsdata.views              windows over stored sequences (padding/cropping primitives)
    lsdata.layouts            samples + sequences -> plain / hpmn / shan / mimn Parquet
    lsdata.stats, lsdata.validate   inspection and leak checks

Every default lives in :mod:`lsdata.defaults`.
"""

__version__ = "0.1.0"
