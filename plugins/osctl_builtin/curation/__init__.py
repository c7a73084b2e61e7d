"""Built-in curation components: the ``vlm`` captioner and the ``motion``, ``tech`` and ``aesthetic`` scorers.

Importing this package stays light: OpenCV, torch and transformers are imported when a component is built.
"""
