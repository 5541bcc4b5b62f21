"""What a Triton server is doing, as plain data: metrics text, the statistics API, host GPU figures, a model's
spec as the server reports it, snapshots (``monitor``) and the pollers that share them between panels."""

__all__ = []
