"""LVLM Atlas reference implementations.

One module per method, grouped by stage (``encoding``, ``prefilling``, ``decoding``) or topic
(``hallucination``, ``continual_ad``); shared pieces live in ``common``. Every method module
opens with a *paper card* docstring and registers itself in :mod:`reference_impls.registry`.
"""

__all__ = ["registry"]
