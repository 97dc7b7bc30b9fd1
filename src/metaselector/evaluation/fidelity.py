"""The report's account of how a run relates to the paper: which rows are the paper's, which
settings differ from section 5.3 (computed, see experiment/paper.py), what a meta-trained row
is when early stopping keeps its start, and what the selectors do per user."""

from __future__ import annotations

from dataclasses import dataclass, field

from .diagnostics import diagnostics_table

EXTENSION_MARK = "†"


@dataclass
class Fidelity:
    deviations: list[dict]  # setting, value, paper, source, rows
    open_choices: dict[str, str]  # setting -> the reading the paper row takes
    structural: list[str]
    row_info: dict[str, dict]  # row -> variant, and for meta-trained rows: best_epoch per seed, start
    diagnostics: dict[str, dict] = field(default_factory=dict)  # selector row -> diagnostics (first seed)
    diagnostics_figure: str | None = None

    def results_fields(self) -> dict:
        return {"deviations": self.deviations, "open_choices": self.open_choices, "structural": self.structural,
                "selector_diagnostics": self.diagnostics}


def row_label(name: str, info: dict) -> str:
    return f"{name} {EXTENSION_MARK}" if info.get("variant") == "extension" else name


def table_note() -> str:
    return (f"Rows marked {EXTENSION_MARK} go beyond the paper (the project's extensions and extra baselines); "
            "unmarked rows run the paper's methods with its settings, except where \"Deviations from the "
            "paper\" below says otherwise.")


def _format(value) -> str:
    if isinstance(value, list):
        return "-".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def deviations_section(fidelity: Fidelity) -> list[str]:
    lines = ["| setting | this run | paper | where the paper says it | rows |", "|---|---|---|---|---|"]
    for d in fidelity.deviations:
        lines.append(f"| `{d['setting']}` | {_format(d['value'])} | {_format(d['paper'])} | {d['source']} | "
                     f"{d['rows']} |")
    table = "\n".join(lines) if fidelity.deviations else "No setting of this run differs from the paper's."
    choices = "\n".join(f"- `{k}`: {v}" for k, v in fidelity.open_choices.items())
    structure = "\n".join(f"- {s}" for s in fidelity.structural)
    return ["## Deviations from the paper",
            "Every setting whose resolved value differs from sections 4, 5.2 and 5.3 of the paper, found by "
            "comparing this run's configuration with the paper's values (`experiment/paper.py`):", table,
            "Choices the paper leaves open, as the paper row reads them:", choices,
            "Differences by construction:", structure]


def discarded_section(fidelity: Fidelity, seeds: list[int]) -> list[str]:
    """For each meta-trained row whose best epoch was 0 on some seed: what the row then is."""
    lines = []
    for name, info in fidelity.row_info.items():
        epochs = info.get("best_epoch")
        if not epochs:
            continue
        zero = [str(s) for s, e in zip(seeds, epochs, strict=False) if e == 0]
        if zero:
            lines.append(f"- **{name}**: best epoch 0 on {_seeds(zero)}; "
                         f"meta-training never beat its start there, so on those seeds the row is its start: "
                         f"{info['start']}.{_rate_note(info, seeds, epochs)}")
    best = "\n".join(f"- {name}: " + ", ".join(map(str, info["best_epoch"]))
                     for name, info in fidelity.row_info.items() if info.get("best_epoch"))
    return ["## What each meta-trained row kept", "Best epoch per seed (0: the start was kept):", best,
            "\n".join(lines) if lines else "Every meta-trained row kept a meta-trained epoch on every seed."]


def _seeds(seeds: list[str]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}"


def _rate_note(info: dict, seeds: list[int], epochs: list) -> str:
    """For a kept start whose selector rates were scaled ([meta] selector_rate_scales): on which
    seeds the selector's own per-user step, at its rates times the chosen factor, is what sets the
    row apart from its start's blend, and on which the row's weights are its start's."""
    factors = info.get("selector_rate_factor")
    if not factors:
        return ""
    kept = [(str(s), f) for s, e, f in zip(seeds, epochs, factors, strict=False) if e == 0 and f is not None]
    scaled = [f"{s} (x{f:g})" for s, f in kept if f != 1]
    learned = [s for s, f in kept if f == 1]
    parts = []
    if scaled:
        parts.append(f" On {_seeds(scaled)} the selector's rates were scaled by the factor chosen on held-out "
                     "rows, so its inner step on each user's rows moves the weights per user: that step is "
                     "what the row adds to its start.")
    if learned:
        parts.append(f" On {_seeds(learned)} the learned rates were kept (factor 1): the row's weights are its "
                     "start's (one blend for everyone, or the stacking blend of each user's profile).")
    return "".join(parts)


def diagnostics_section(fidelity: Fidelity, seed: int) -> list[str]:
    if not fidelity.diagnostics:
        return []
    parts = ["## Selector diagnostics: what the selectors do per user",
             f"Seed {seed}, test users, after each user adapts on their training rows. Mean weight: the mean over "
             "users of each user's mean weight; spread: its standard deviation across users; entropy of the "
             "weights in nats; agreement: the share of each user's rows whose split-half oracle choice (made on "
             "the other half of their test rows) is the model the selector weights most for that user. A "
             "selector whose weights vary by less than 0.005 across users and candidates is a global blend.",
             diagnostics_table(fidelity.diagnostics)]
    if fidelity.diagnostics_figure:
        parts.append(f"![{fidelity.diagnostics_figure}]({fidelity.diagnostics_figure})")
    return parts
