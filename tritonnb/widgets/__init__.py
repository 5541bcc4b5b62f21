"""ipywidgets views of a Triton server: the dashboard panel and the live strip under a model's card."""
