"""Server scripts that ``benchmarks.subjects`` runs in subprocesses: ``python -m benchmarks.servers.<name> CONFIG``,
with CONFIG a JSON object (weights, dims, device, threads, ports, files). Not meant to be started by hand."""
