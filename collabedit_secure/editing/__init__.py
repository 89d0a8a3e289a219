"""MEMIT editing, built for collaboration: per-layer sums S_KK, S_RK in, ΔW out."""

from .adapters import FAMILIES, ModelAdapter, UnsupportedModelError
from .context import generate_context_templates
from .covariance import SecondMoment, export_memit_stats, import_memit_stats, layer_stats
from .delta import DeltaMismatchError, EditDelta
from .hparams import HparamsError, MemitHparams
from .memit import (
    EditResult,
    LayerContribution,
    PartyWorker,
    edit,
    sum_contributions,
    update_dynamic_covariance,
)
from .requests import EditRequest, RequestError, requests_from_records

__all__ = [
    "FAMILIES", "ModelAdapter", "UnsupportedModelError", "generate_context_templates", "SecondMoment",
    "export_memit_stats", "import_memit_stats", "layer_stats", "DeltaMismatchError", "EditDelta",
    "HparamsError", "MemitHparams", "EditResult", "LayerContribution", "PartyWorker", "edit",
    "sum_contributions", "update_dynamic_covariance", "EditRequest", "RequestError", "requests_from_records",
]
