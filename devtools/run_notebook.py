"""Execute a notebook in a real kernel and print its outputs as text (for terminals and CI).

``python -m devtools.run_notebook NOTEBOOK [--output PATH]`` (from the repository root); exits non-zero if a cell fails.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time


def render_text(notebook) -> str:
    """The notebook's code cells and their text outputs, as a terminal would show them."""
    lines: list[str] = []
    for number, cell in enumerate((c for c in notebook.cells if c.cell_type == "code"), start=1):
        lines.append(f"\nIn [{number}]: " + cell.source.replace("\n", "\n        "))
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                lines.append(output.text.rstrip())
            elif output.output_type in ("execute_result", "display_data"):
                lines.append(output.get("data", {}).get("text/plain", "").rstrip())
            elif output.output_type == "error":
                lines.append(f"{output.ename}: {output.evalue}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the notebook, print it, save the executed copy."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=pathlib.Path)
    parser.add_argument("--output", type=pathlib.Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds a cell may run")
    args = parser.parse_args(argv)

    notebook = nbformat.read(args.notebook, as_version=4)
    started = time.perf_counter()
    failed = None
    try:
        NotebookClient(
            notebook,
            timeout=args.timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(args.notebook.parent)}},
        ).execute()
    except CellExecutionError as error:
        failed = error
    print(render_text(notebook))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, args.output)
    if failed is not None:
        print(f"\n{args.notebook} FAILED:\n{failed}", file=sys.stderr)
        return 1
    print(
        f"\n{args.notebook}: all cells ran in {time.perf_counter() - started:.1f} s"
        + (f"; executed copy in {args.output}" if args.output else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
