"""The paper's settings (sections 4, 5.2, 5.3) in one table, the paper row's meta settings drawn
from it, and what a run does differently: the report's "Deviations from the paper" list is made
by comparing a run's resolved settings with this table, never written by hand.

Glossary: the *paper* MetaSelector row runs Algorithm 1 with Meta-SGD as section 5.3 states it;
the *validated* row runs the [meta] table of the configuration, whose defaults are this
project's extensions, each chosen on held-out training rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..config import RunConfig
from ..selection.meta_settings import MetaSettings

AMAZON = "amazon-electronics"


@dataclass(frozen=True)
class PaperValue:
    movielens: object  # MovieLens-1M (and every dataset the paper did not run, by default)
    amazon: object
    source: str  # where the paper says it

    def value(self, dataset: str) -> object:
        return self.amazon if dataset == AMAZON else self.movielens


def _same(value, source: str) -> PaperValue:
    return PaperValue(value, value, source)


# Setting path -> the paper's value. "meta.*" outer rates are relative: None means "inner_lr / 10".
PAPER: dict[str, PaperValue] = {
    "models": _same(["LR", "FM", "FFM", "DeepFM"], "5.2: LR, FM, FFM, DeepFM"),
    "embedding_dim": _same(10, "5.2: latent dimension of FM and FFM 10"),
    "deepfm_hidden": PaperValue([256, 256, 256], [400, 400, 400], "5.2: DeepFM 256-256-256 (Amazon 400-400-400)"),
    "dropout": _same(0.1, "5.2: DeepFM dropout setting 0.9, read as the keep probability"),
    "pretrain.batch_size": _same(1000, "5.3: mini-batch size 1000"),
    "sample_level.hidden": _same([400, 400, 400], "5.2: a 400-400-400 MLP classifier"),
    "meta.users_per_episode": _same(10, "5.3: 10 active users per episode"),
    "meta.inner_steps": _same(1, "Algorithm 1 line 13: one gradient step"),
    "meta.inner_lr": PaperValue(0.001, 0.0001, "5.3: initial alpha 0.001 (Amazon 0.0001)"),
    "meta.outer_lr": _same(None, "5.3: outer rate beta = alpha / 10"),
    "meta.selector_outer_lr": _same(None, "eq. 5: one beta for theta, phi and alpha"),
    "meta.alpha_outer_lr": _same(None, "eq. 5: one beta for theta, phi and alpha"),
    "meta.learn_inner_lr": _same(True, "5.3: Meta-SGD learns alpha"),
    "meta.first_order": _same(False, "4.2: MAML through the inner step (second order)"),
    "meta.selector_hidden": _same([200, 200, 200], "5.3: a 200-200-200 MLP selector"),
    "meta.selector_uses_predictions": _same(False, "4.1: in practice an MLP on x only"),
    "meta.selector_user_profile": _same(False, "4.1: the selector sees x only (here: whether it reads the user's "
                                               "profile, by this setting or selector_start = profile-stacking)"),
    "meta.model_loss": _same("mixture", "Algorithm 1 lines 12, 18: the mixture's LogLoss for theta and phi"),
    "meta.model_start": _same("pretrained", "Algorithm 1 line 3: theta pretrained"),
    "meta.pretrain_on": _same("train", "Algorithm 1 line 3: pretrained on the union of the users' training sets"),
    "meta.refit_base_models": _same(False, "Algorithm 1: the meta-trained theta itself is deployed"),
    "meta.selector_rate_scales": _same([], "5.3: the selector's rates are the ones Meta-SGD learned"),
}

# Choices the paper leaves open, and the plainest reading the paper row takes.
OPEN_CHOICES: dict[str, tuple[object, str]] = {
    "meta.selector_start": ("uniform", "the selector starts from equal weights (its last layer zero)"),
    "meta.stop_on": ("held-out-rows", "meta-training stops when the LogLoss on rows no model trained on (a 10% "
                     "slice of the support rows, each user adapting on their other training rows) stops "
                     "falling: the paper gives no stopping rule"),
    "meta.epochs": (None, "at most [meta] epochs passes over the meta-training users, patience [meta] patience"),
}

# What the project does differently by construction, whatever the settings.
STRUCTURAL = (
    "FFM has one field per feature group ({fields} fields here) where the paper has 22 (MovieLens), 18 (Amazon) "
    "and 8 (production) fields.",
    "Per-user splits (80/20 train/test, then 75/25 support/query) are drawn once per seed, not resampled per "
    "episode (Algorithm 1 line 7 samples support and query each time).",
    "Every base model early-stops on one shared 10% slice of the support rows, which meta-training never sees; "
    "the paper gives no stopping rule for pretraining.",
    "The sample-level selector is applied at test time to the models continued on all training rows (the paper "
    "does not say which models it weights).",
    "The paper's production dataset is not available; ml-latest-small has no demographic features.",
)

# The settings the paper row takes from the paper (and from OPEN_CHOICES); the rest of [meta]
# (sizes, epochs, the inner rate) comes from the run's configuration, whose defaults are the paper's.
_PAPER_ROW_FIXED = ("learn_inner_lr", "first_order", "selector_uses_predictions", "selector_user_profile",
                    "model_loss", "model_start", "pretrain_on", "refit_base_models", "selector_rate_scales")


def paper_meta(meta: MetaSettings) -> MetaSettings:
    """The [meta] settings of the "MetaSelector (paper)" row: the paper's method with this run's
    sizes and inner rate; one outer rate, inner_lr / 10, for theta, phi and alpha."""
    beta = meta.inner_lr / 10
    fixed = {name: PAPER[f"meta.{name}"].movielens for name in _PAPER_ROW_FIXED}
    open_choices = {k.split(".", 1)[1]: v for k, (v, _) in OPEN_CHOICES.items() if v is not None}
    return replace(meta, outer_lr=beta, selector_outer_lr=beta, alpha_outer_lr=beta, **fixed, **open_choices)


def resolved_meta(meta: MetaSettings) -> dict:
    """[meta] settings with every outer rate explicit (alpha_outer_lr = 0 means outer_lr)."""
    values = dict(meta.__dict__)
    values["alpha_outer_lr"] = meta.alpha_outer_lr or meta.outer_lr
    values["selector_hidden"] = list(meta.selector_hidden)
    return values


def _paper_value(path: str, dataset: str) -> object:
    value = PAPER[path].value(dataset)
    return PAPER["meta.inner_lr"].value(dataset) / 10 if value is None else value


def _value_of(config: RunConfig, path: str, meta: MetaSettings) -> object:
    if path == "meta.selector_user_profile":  # a stacking start reads the profile too
        return meta.reads_profile
    if path.startswith("meta."):
        return resolved_meta(meta)[path[5:]]
    node = config
    for part in path.split("."):
        node = getattr(node, part)
    return list(node) if isinstance(node, list) else node


def _differs(value, paper) -> bool:
    if isinstance(value, float) and isinstance(paper, float):
        return abs(value - paper) > 1e-12 * max(1.0, abs(paper))
    return value != paper


@dataclass(frozen=True)
class Deviation:
    setting: str
    value: object
    paper: object
    source: str
    rows: str  # which rows it concerns

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def deviations(config: RunConfig, row_settings: dict[str, MetaSettings]) -> list[Deviation]:
    """Every setting of this run whose value differs from the paper's: shared settings once
    (they concern every row), [meta] settings per meta-trained row that runs them."""
    out = []
    for path, paper in PAPER.items():
        if path.startswith("meta."):
            continue
        value, expected = _value_of(config, path, config.meta), _paper_value(path, config.dataset)
        if _differs(value, expected):
            out.append(Deviation(path, value, expected, paper.source, "every row"))
    grouped: dict[tuple[str, str], tuple[object, object, str, list[str]]] = {}
    for row, meta in row_settings.items():
        for path, paper in PAPER.items():
            if not path.startswith("meta."):
                continue
            expected = _paper_value(path, config.dataset)
            value = _value_of(config, path, meta)
            if _differs(value, expected):
                # rows that share a deviating value are listed together
                grouped.setdefault((path, repr(value)), (value, expected, paper.source, []))[3].append(row)
    for (path, _), (value, expected, source, rows) in grouped.items():
        out.append(Deviation(path, value, expected, source, ", ".join(rows)))
    return out + _model_overrides(config)


def _model_overrides(config: RunConfig) -> list[Deviation]:
    """A [model_settings.<model>] value set for one of the paper's four models."""
    shared = {"embedding_dim": "embedding_dim", "hidden": "deepfm_hidden", "dropout": "dropout"}
    out = []
    for model in config.models:
        own = config.model_settings.get(model)
        if model not in PAPER["models"].movielens or own is None:
            continue
        for key, value in own.__dict__.items():
            if value is None:
                continue
            paper = PAPER[shared[key]] if key in shared else None
            expected = paper.value(config.dataset) if paper else "not stated"
            if paper is not None and not _differs(value, expected):
                continue  # set, but to the paper's value: no deviation
            out.append(Deviation(f"model_settings.{model}.{key}", value, expected,
                                 paper.source if paper else "the paper gives one setting for all models",
                                 "every row"))
    return out


def structural_notes(num_fields: int) -> list[str]:
    return [note.format(fields=num_fields) for note in STRUCTURAL]


def start_description(meta: MetaSettings, with_selector: bool) -> str:
    """What a meta-trained row is when early stopping keeps its start (best epoch 0)."""
    if not with_selector:
        return "the pretrained model, adapted per user by one Meta-SGD step at the initial rate"
    models = ("each base model's own per-user-adaptation learner" if meta.model_start == "adapted"
              else "the pretrained base models")
    blend = {"global-mixture": "the global blend's weights",
             "profile-stacking": "feature-weighted stacking's weights (from the user's profile)"}.get(
        meta.selector_start, "equal weights")
    if meta.model_start == "adapted" and meta.selector_start in ("global-mixture", "profile-stacking"):
        row = "Global Blend" if meta.selector_start == "global-mixture" else "Feature-weighted Stacking"
        return f"Per-user adaptation + {row} ({models} mixed by {blend}), up to the selector's own inner step"
    return f"{models} mixed by {blend}, each user adapting theta and phi by the inner step at the initial rates"
