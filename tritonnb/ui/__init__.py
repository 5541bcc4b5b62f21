"""What the notebook shows: the magics, model cards, status reports and the ipywidgets panels. The top layer:
it calls everything below it and nothing below imports it."""

__all__ = []
