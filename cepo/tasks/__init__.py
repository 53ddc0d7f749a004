"""Tasks: prompt splits with reference answers, and their verifiers."""

from cepo.tasks.arithmetic import Arithmetic
from cepo.tasks.base import Example, Task
from cepo.tasks.filler import FillerArithmetic
from cepo.tasks.jsonl import DatasetTask, JsonlTask
from cepo.tasks.questions import ArithmeticQuestions

__all__ = ["Arithmetic", "ArithmeticQuestions", "DatasetTask", "Example", "FillerArithmetic", "JsonlTask", "Task"]
