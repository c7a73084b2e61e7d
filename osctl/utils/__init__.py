"""Small, dependency-free helpers shared by every part of osctl.

- :mod:`osctl.utils.atomic`: write files and folders atomically, never outside a chosen output folder.
- :mod:`osctl.utils.safe_pickle`: load pickles that may only hold plain containers and scalars.
"""
