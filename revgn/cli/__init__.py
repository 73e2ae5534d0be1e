"""The ``revgn`` command line (``python -m revgn``, the ``revgn`` script) and the modules only it
uses: ``commands`` (the parser), ``common`` (argument types, usage errors), ``demo``,
``backend_check`` (``revgn check``: every fast backend against the reference), ``bench``
(``revgn bench``, and the measurements of ``benchmarks/``) and ``egn_examples``. None of them is
on the library's import path: ``import revgn`` imports nothing from here.
"""
from revgn.cli.commands import build_parser, info_report, main

__all__ = ["main", "build_parser", "info_report"]
