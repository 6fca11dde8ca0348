"""The workbook's helpers: what every chapter imports.

    from utils import setup, load_model, check_exercise, show_progress, prompt_set
"""

from utils.checks import check_exercise
from utils.models import load_model
from utils.organism.world import prompt_set
from utils.progress import show_progress
from utils.session import progress_bar, setup

__all__ = ["check_exercise", "load_model", "prompt_set", "progress_bar", "setup", "show_progress"]
