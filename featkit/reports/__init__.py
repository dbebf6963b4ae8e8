"""Formatting of computed results (tables, plots): no computation happens here.

:mod:`featkit.reports.tables` needs only rich; :mod:`featkit.reports.plots` imports matplotlib, so import it
only when a picture is asked for.
"""
