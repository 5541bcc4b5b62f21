"""What the notebook shows: model cards, status reports, the ipywidgets panels and their HTML, and the helper that
runs a ``%%triton_model`` cell. The top layer below the two front ends (``tritonnb`` and ``tritonnb.magics``): it
calls everything below it and nothing below imports it."""

__all__ = []
