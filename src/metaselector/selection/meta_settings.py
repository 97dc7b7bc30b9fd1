"""The [meta] settings: MetaSelector's meta-training and meta-testing (paper 5.3).

Defaults are this project's validated settings; the paper row takes the paper's values for the
settings that define its method (experiment/paper.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..settings import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Interval, Options, setting


@dataclass
class MetaSettings:
    """The [meta] table: MetaSelector's meta-training and meta-testing (paper 5.3)."""

    users_per_episode: int = setting(10, AT_LEAST_ONE)
    inner_steps: int = setting(1, AT_LEAST_ONE)
    inner_lr: float = setting(0.001, POSITIVE)  # Meta-SGD alpha's initial value
    outer_lr: float = setting(0.0001, POSITIVE)  # beta = alpha / 10
    selector_outer_lr: float = setting(0.001, POSITIVE)
    # Meta-SGD rates learn faster than theta: 1e-2 won on held-out users' query LogLoss over
    # 1e-4 (= outer_lr, the paper's single beta), 1e-3 and 5e-2. 0 means: the same as outer_lr.
    alpha_outer_lr: float = setting(0.01, NON_NEGATIVE)
    epochs: int = setting(8, AT_LEAST_ONE)
    patience: int = setting(2, AT_LEAST_ONE)
    first_order: bool = setting(False)
    learn_inner_lr: bool = setting(True)
    max_episodes: int = setting(0, NON_NEGATIVE)  # per epoch; 0 = every meta-training user once
    # Training users held out of meta-training; their query LogLoss is recorded every epoch.
    validation_users: float = setting(0.1, Interval(0, 1, hi_open=True))
    # What stops meta-training (and picks its best epoch). "held-out-rows": the test-time setup
    # itself on rows no model has trained on: the selector and theta change applied to the
    # single models, each checked user adapting on their other training rows and predicting
    # their rows of the base models' shared validation slice (which meta-training never sees).
    # "held-out-users": the query LogLoss of held-out training users, with the models
    # meta-training uses (the paper's meta-validation).
    stop_on: str = setting("held-out-rows", Options(("held-out-rows", "held-out-users")))
    check_users: int = setting(2000, AT_LEAST_ONE)  # users sampled for "held-out-rows"
    selector_hidden: list[int] = setting([200, 200, 200], AT_LEAST_ONE, non_empty=True)
    # "global-mixture": the selector starts from the best single blend of the base models on the
    # meta-training query rows (the Global Blend row); "uniform": from equal weights;
    # "profile-stacking": from feature-weighted stacking's blend, weights a linear function of
    # the user's profile fitted on the same rows (the Feature-weighted Stacking row; the selector
    # then reads the profile). With early stopping on the test-time setup, meta-training is kept
    # only where it beats its start, so the start should be the best blend there is.
    # "profile-stacking" won on held-out rows over "global-mixture" (docs/findings.md).
    selector_start: str = setting("profile-stacking", Options(("uniform", "global-mixture", "profile-stacking")))
    selector_uses_predictions: bool = setting(True)  # chosen by held-out users' query LogLoss
    # The selector also sees the user's profile from their support rows (selection/user_profile.py:
    # event count, positive rate, mean item popularity, rating mean and spread, mean gap between
    # events). Off by default: see docs/findings.md.
    selector_user_profile: bool = setting(False)
    # After meta-training, the selector's Meta-SGD rates are multiplied by each of these factors
    # in turn and the factor whose test-time setup has the lowest LogLoss on the held-out rows
    # is kept (the rows and check that stop meta-training): how far each user's inner step
    # moves the selector away from the shared one, i.e. how much it selects per user, chosen on
    # validation. Factor 1 (the rates as learned) is always a candidate; [] skips the choice
    # (the paper). Beyond the paper; see docs/findings.md.
    selector_rate_scales: list[float] = setting([1.0, 10.0, 100.0, 1000.0, 5000.0, 20000.0, 100000.0], POSITIVE)
    # A factor other than 1 is kept only if its held-out gain over factor 1 is at least this many
    # standard errors (of the mean per-row gain, users as the units: a user's rows move together);
    # else the rates stay as learned. On seed 0 of the extended preset with RatingMF, x1000 gained
    # 0.00067 held-out LogLoss and lost 0.0014 on test: a gain that size is the held-out rows'
    # noise. 0 keeps the lowest held-out LogLoss, whatever its margin.
    selector_rate_min_z: float = setting(2.0, NON_NEGATIVE)
    # What each base model's parameters descend, in the inner step and the outer step: "mixture"
    # (the paper: the mixture's LogLoss) or "own" (the model's own LogLoss; the selector still
    # descends the mixture's). See Ensemble.loss. "own" won on held-out rows (docs/findings.md).
    model_loss: str = setting("own", Options(("mixture", "own")))
    # Where the base models' theta and Meta-SGD rates start meta-training: "pretrained" (the
    # paper) or "adapted": from each model's own per-user-adaptation meta-training (the model
    # alone, no selector; the "<model> + per-user adaptation" rows), so that the joint stage
    # starts from every model adapting well and is kept only where the selector adds to it.
    # "adapted" won on held-out rows (docs/findings.md).
    model_start: str = setting("adapted", Options(("pretrained", "adapted")))
    # Which rows the meta-learned base models are pretrained on: "support" keeps the query sets
    # out-of-sample for the selector (the single models are then these models trained on, warm,
    # over all training rows); "train" uses all training rows.
    pretrain_on: str = setting("support", Options(("support", "train")))
    # With pretrain_on = "support": at test time every selector is applied to the single models
    # (support models continued on all training rows), carrying over meta-training's theta change.
    refit_base_models: bool = setting(True)

    @property
    def reads_profile(self) -> bool:
        """The selector reads the user's profile (as an input, or through its stacking start)."""
        return self.selector_user_profile or self.selector_start == "profile-stacking"


@dataclass
class MetaHistory:
    best_epoch: int = 0
    best_validation: float = float("inf")
    epochs: list[dict] = field(default_factory=list)
