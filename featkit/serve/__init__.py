"""``featkit serve``: a local web app for similar-image search over an index (the optional extra ``featkit[serve]``).

:mod:`~featkit.serve.library` is what the app shows (items, vectors, neighbours, pictures, groups, map),
:mod:`~featkit.serve.queries` embeds uploads on one thread, :mod:`~featkit.serve.guard` decides who may ask,
:mod:`~featkit.serve.app` has the routes, and ``static/`` the page.
"""
