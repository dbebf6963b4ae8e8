"""Fine-tuning with named recipes.

``recipe`` (TOML → frozen Recipe), ``trainer`` (the loop, CPU/GPU/DDP), ``checkpoint`` (atomic,
weights_only-loadable), ``rundir`` (what a run writes), ``data``, ``groups``, ``schedule``.
"""
