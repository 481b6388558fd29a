"""``spark-submit`` entry point: the ``lsdata`` command line with ``--engine spark``, on spark-submit's master.

::

    spark-submit --master local[2] --driver-memory 4g "$(python -c 'import lsdata.spark.submit as m; print(m.__file__)')" \\
        ingest taobao UserBehavior.csv --out data/taobao
    spark-submit ... submit.py split data/taobao
    spark-submit ... submit.py layout data/taobao hpmn shan

Arguments are those of ``lsdata ingest|split|layout``; ``--engine spark`` is added when not given.
"""

from __future__ import annotations

import sys

SPARK_COMMANDS = ("ingest", "split", "layout")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SPARK_COMMANDS and "--engine" not in argv:
        argv += ["--engine", "spark"]
    from lsdata.cli import app

    app(argv, prog_name="lsdata")


if __name__ == "__main__":
    main()
