"""From notebook to fleet: a served model exported to a Triton model repository, docker compose and Kubernetes."""

__all__ = []
