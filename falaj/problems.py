"""Saying what is wrong with a declared file or document, every problem at once.

The feature schemas, the model specs, manifest fields and event data are all
checked by pydantic models; each problem is reported as ``where: what`` with
``where`` the dotted path to the field, so one message lists them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from falaj.errors import ConfigError


def validation_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    """Each of pydantic's errors as ``<prefix><dotted.path>: <message>``."""
    return [
        f"{prefix}{'.'.join(str(part) for part in err['loc']) or '<root>'}: {err['msg']}"
        for err in exc.errors()
    ]


def read_yaml(path: Path, what: str, *, hint: str = "") -> Any:
    """The YAML document in ``path``; a ``ConfigError`` naming ``what`` it should hold."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(
            f"cannot read the {what} {path}: {exc.strerror}" + (f"; {hint}" if hint else "")
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
