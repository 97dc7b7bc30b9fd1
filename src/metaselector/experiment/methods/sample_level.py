"""The paper's sample-level selector: models on the support rows, a classifier of each query
row's best model on the query rows, its distribution weighting the models."""

from __future__ import annotations

import numpy as np
import torch

from ...models import ModelSettings
from ...random_streams import int_seed
from ...selection.sample_level import fit_sample_selector, predict_sample_selector
from ...selection.selector import Selector
from ...training.state import StateFile
from ..context import TrainingContext
from .base import Method, rows_of, split_by_task


class SampleLevelSelector(Method):
    name = "Sample-level Selector"
    variant = "paper"

    def fit(self, context: TrainingContext) -> dict:
        config = context.config
        with context.timer("sample-level selector"):
            torch.manual_seed(int_seed(context.seed, "sample-level", 0))
            self.selector = Selector(context.data.layout,
                                     ModelSettings(config.embedding_dim, list(config.sample_level.hidden)),
                                     len(config.models), uses_predictions=True)
            return fit_sample_selector(self.selector, context.tensors, context.split.query,
                                       context.support_probabilities, config.sample_level.epochs,
                                       config.pretrain.adam_lr, config.pretrain.batch_size,
                                       int_seed(context.seed, "sample-level", 1),
                                       context.progress, state=StateFile.named(context.state_dir, "sample-level"))

    def predict(self, context: TrainingContext, tasks) -> list[np.ndarray]:
        p = predict_sample_selector(self.selector, context.tensors, rows_of(tasks), context.test_time_probabilities)
        return split_by_task(p, tasks)


def methods(config) -> list[Method]:
    return [SampleLevelSelector()]
