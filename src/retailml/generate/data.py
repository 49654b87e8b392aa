"""The generated data set a run uses when no source is given: written once per parameters."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from retailml.generate.generator import GENERATOR_VERSION, GenerateSummary, generate
from retailml.settings import Settings

MARKER = "generated.json"


def generate_data(
    settings: Settings, *, out: Path | None = None, force: bool = False
) -> GenerateSummary:
    """Generate the synthetic data set described by ``settings.generate`` into ``out`` (default
    the ``data_dir`` setting).

    Without ``force`` an existing data set made with the same parameters and generator version
    is reused (the generator is deterministic, so it would be byte-identical).

    Returns:
        The generator's summary, or the stored one when reused.
    """
    folder = out or Path(settings.path(settings.data_dir))
    params = {
        **settings.generate.model_dump(mode="json"),
        "seed": settings.seed,
        "generator": GENERATOR_VERSION,
    }
    marker = folder / MARKER
    if not force and marker.is_file():
        stored = json.loads(marker.read_text())
        if stored.get("params") == params:
            s = stored["summary"]
            return GenerateSummary(
                **{
                    **s,
                    "out_dir": Path(s["out_dir"]),
                    "files": tuple(Path(f) for f in s["files"]),
                    "ground_truth_dir": Path(s["ground_truth_dir"]),
                }
            )
    g = settings.generate
    summary = generate(
        folder,
        customers=g.customers,
        products=g.products,
        days=g.days,
        start_date=g.start_date,
        seed=settings.seed,
        malformed_fraction=g.malformed_fraction,
        guest_fraction=g.guest_fraction,
        return_fraction=g.return_fraction,
        profile=g.profile,
    )
    # Paths become strings; everything else in the summary is already JSON.
    stored_summary = json.loads(json.dumps(dataclasses.asdict(summary), default=str))
    marker.write_text(json.dumps({"params": params, "summary": stored_summary}, indent=2))
    return summary
