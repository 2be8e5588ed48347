"""impress: ImpressLearn and SupSup continual learning over random, frozen backbones."""

from __future__ import annotations

from impress.config import Config, ConfigError
from impress.trainer import Result, run

__all__ = ["Config", "ConfigError", "Result", "run"]
__version__ = "0.1.0"
