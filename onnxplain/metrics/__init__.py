"""Measuring explanations: region-perturbation curves and AOPC (Samek et al.), APEM (do Valle).

Numpy in, numpy out: every metric takes relevance maps shaped like the inputs, from any source.
"""
from .apem import APEM, APEMResult, directions, loss_gradient, stage_maps
from .compare import cross_entropy, explanation_filter, loss_correlation, pairwise
from .evaluation import Evaluation, EvaluationReport
from .perturbation import aopc, region_perturbation
from .search import bracket_search, linear_search

__all__ = ["APEM", "APEMResult", "Evaluation", "EvaluationReport", "aopc", "bracket_search", "cross_entropy",
           "directions", "explanation_filter", "linear_search", "loss_correlation", "loss_gradient", "pairwise",
           "region_perturbation", "stage_maps"]
