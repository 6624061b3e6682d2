"""Benchmarks: scripts that print their figures and keep them in RESULTS-*.md files."""

from __future__ import annotations

from pathlib import Path

MARKER = "<!-- figures -->"


def write_results(name: str | Path, lines: list[str]) -> Path:
    """Replace the figures of `benchmarks/<name>` (or of the file at a given path)
    below the marker, keeping the hand-written verdict above it."""
    out = (Path(name) if isinstance(name, Path) or "/" in name
           else Path(__file__).with_name(name))
    existing = out.read_text() if out.exists() else ""
    head = existing.split(MARKER)[0] if MARKER in existing else ""
    out.write_text(head + MARKER + "\n" + "\n".join(lines) + "\n")
    return out


def machine() -> str:
    """`x86_64, 2 CPU cores (Intel(R) Xeon(R) Processor)`: what a figure was measured on."""
    import os
    import platform

    model = platform.processor() or ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.machine()}, {os.cpu_count()} CPU cores" + (f" ({model})" if model else "")


def demo_with_space(prefix: str, space_yaml: str, *, kind: str = "digits"
                    ) -> tuple[Path, Path]:
    """A temporary folder with demo data of `kind` (64 px) and a space file: (data, space)."""
    import tempfile

    from tlsearch.demo import write_demo_data

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    write_demo_data(tmp / "demo", size=64, kind=kind)
    space = tmp / "space.yaml"
    space.write_text(space_yaml)
    return tmp / "demo", space
