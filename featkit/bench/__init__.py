"""``featkit bench``: extract (or re-use) features of several models' taps on several datasets, probe each one.

Report which layer transfers best.
"""
