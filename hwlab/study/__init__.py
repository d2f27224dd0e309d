"""hwlab.study: every datatype on real weights, measured end to end, simulated, and reported.

>>> from hwlab.study import run_study, write_report      # doctest: +SKIP
>>> result = run_study(formats=["int4", "nf4"], group_sizes=[64])
>>> write_report(result, "study-out")                    # report.md, CSV, JSON, PNG plots

:mod:`~hwlab.study.run` runs it, :mod:`~hwlab.study.measure` measures one format at one group
size, :mod:`~hwlab.study.hardware` asks the simulators, :mod:`~hwlab.study.report` writes the
folder; the model is all-MiniLM-L6-v2 (:mod:`~hwlab.study.minilm`), computed by hwlab's own
forward pass (:mod:`~hwlab.study.encoder`, :mod:`~hwlab.study.wordpiece`).
"""
from .run import StudyResult, load_weights, run_study

__all__ = ["StudyResult", "load_weights", "run_study"]
