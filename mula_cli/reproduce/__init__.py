"""`mula reproduce`: the paper's tables and the report that sets ours beside them (the rows are trained
and scored by :mod:`mula_cli.train.reproduce`).

May import: utils.
"""
