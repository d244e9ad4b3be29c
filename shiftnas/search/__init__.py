"""Search and evaluation on a trained run: load it (`run`), budgets (`budget`), the generator's
subnet per budget (`generate`), the AutoFormer-style evolutionary baseline (`evolution`),
per-bin evaluation, and ranking correlation between inherited and fine-tuned top-1 (`ranking`)."""
from .budget import format_budget, parse_budget
from .run import LoadedRun, load_run

__all__ = ["LoadedRun", "format_budget", "load_run", "parse_budget"]
