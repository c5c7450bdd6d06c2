"""Checks of the core's constructor arguments: an error names the argument, the bad value and what
is allowed (the Detectron2 side checks config keys the same way, in crbp_detectron/config.py)."""
from typing import Any, Iterable


def check_choice(name: str, value: Any, choices: Iterable) -> None:
    """Raises ValueError("<name> must be one of (<choices>), got <value>") unless `value` is one of
    `choices` (a dict's keys count as its choices)."""
    allowed = tuple(choices)  # a tuple, so that an unhashable value is compared, not hashed
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
